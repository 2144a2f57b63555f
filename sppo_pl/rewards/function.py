"""User functions as oracles: resolving ``reward.fn`` and checking what it returns."""

from __future__ import annotations

import math
import numbers
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
    """``scores`` as n finite floats. Only a sequence is read: a list or tuple of real numbers, or a 1-D real
    tensor or array (a dict would be read as its keys, a string as its characters); anything else is a
    ValueError naming ``source``, what it returned and what was expected."""
    expected = f"expected a list, tuple, 1-D tensor or array of {n} finite numbers, one per response"
    if not _is_sequence(scores):
        raise ValueError(
            f"{source} must return one number per response: it returned {_describe(scores)}; {expected}"
        )
    bad = next((i for i, v in enumerate(scores) if not _is_real(v)), None)
    if bad is not None:
        raise ValueError(
            f"{source} must return one number per response: it returned {_describe(scores)}, whose row {bad} "
            f"is {_describe(scores[bad])}; {expected}"
        )
    values = [float(v) for v in scores]
    if len(values) != n:
        raise ValueError(
            f"{source} returned {len(values)} scores for {n} responses ({_describe(scores)}); {expected}"
        )
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"{source} returned a non-finite score {values[bad]} for row {bad}; {expected}")
    return values


def _is_sequence(scores) -> bool:
    """A list or tuple, or a 1-D tensor or array."""
    import numpy as np
    import torch

    return isinstance(scores, list | tuple) or (
        isinstance(scores, torch.Tensor | np.ndarray) and scores.ndim == 1
    )


def _is_real(value) -> bool:
    """A real number: Python's, numpy's, or a 0-d real tensor or array (bools count, as 0/1 checks)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_complex()
    if isinstance(value, np.ndarray | np.generic):
        return value.ndim == 0 and value.dtype.kind in "biuf"
    return isinstance(value, numbers.Real)


def _describe(value) -> str:
    """``a dict of length 2 ({0: 1.0, 1: 2.0})``: a returned value's type, its shape or length, and its start."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        size = f" of shape {tuple(shape)}"
    else:
        size = f" of length {len(value)}" if hasattr(value, "__len__") else ""
    text = " ".join(repr(value).split())
    return f"a {type(value).__name__}{size} ({text[:120]}{'...' if len(text) > 120 else ''})"


def brevity(prompts: list[str], responses: list[str], **fields) -> list[float]:
    """Minus the number of words of each response: an example oracle, and a verbosity counterweight in
    ``reward=combined``."""
    return [-float(len(r.split())) for r in responses]
