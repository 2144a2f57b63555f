"""User functions as oracles: resolving ``reward.fn`` and checking what it returns."""

from __future__ import annotations

import math
from collections.abc import Callable


def resolve_function(fn: str | Callable, field: str = "reward.fn") -> Callable:
    """``fn`` itself if callable, else the function at the dotted path (``package.module.function``)."""
    if callable(fn):
        return fn
    from hydra.utils import get_method

    try:
        return get_method(fn)
    except Exception as e:
        raise ValueError(
            f"{field}={fn!r} is not an importable function (package.module.function): {e}"
        ) from e


def check_scores(scores, n: int, source: str) -> list[float]:
    """``scores`` as n finite floats, else a ValueError naming ``source`` and the offending row."""
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source} must return one number per response, got {scores!r:.200}") from e
    if len(values) != n:
        raise ValueError(f"{source} returned {len(values)} scores for {n} responses")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"{source} returned a non-finite score {values[bad]} for row {bad}")
    return values


def brevity(prompts: list[str], responses: list[str], **fields) -> list[float]:
    """Minus the number of words of each response: an example oracle, and a verbosity counterweight in
    ``reward=combined``."""
    return [-float(len(r.split())) for r in responses]
