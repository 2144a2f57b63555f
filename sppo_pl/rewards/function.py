"""User functions as oracles: ``reward=function``, any ``fn(prompts, responses, **fields) -> scores``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import bradley_terry, hard_preference
from sppo_pl.rollout.base import positive_number


class FunctionOracle(Oracle):
    """Scores from ``fn(prompts, responses, answer=[...], **fields)``: one number per response.

    ``fn`` is a callable or its dotted path (``reward.oracle.fn=my_pkg.rewards.brevity``); the keyword lists
    are the rows' answers and the dataset columns named in ``data.fields``. Preferences are Bradley-Terry
    with ``scale`` (``preference=bradley_terry``) or hard comparisons (``preference=hard``, for 0/1 checks);
    ``verifier=true`` makes the mean score an accuracy too (``val/acc``).
    """

    def __init__(
        self,
        fn: str | Callable,
        preference: str = "bradley_terry",
        scale: float = 1.0,
        verifier: bool = False,
    ):
        if preference not in ("bradley_terry", "hard"):
            raise ValueError(
                f"reward.oracle.preference must be 'bradley_terry' or 'hard', got {preference!r}"
            )
        scale = positive_number(scale, "reward.oracle.scale", "a negative scale inverts every preference")
        self.fn = resolve_function(fn)
        self.name = fn if isinstance(fn, str) else dotted_name(fn)
        self.preference, self.scale, self.is_verifier = preference, scale, verifier

    @property
    def source(self) -> str:
        return f"reward.oracle.fn={self.name}"

    def score(self, prompts, responses, **fields):
        return self.fn(prompts, responses, **fields)

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        return hard_preference(scores) if self.preference == "hard" else bradley_terry(scores, self.scale)


def dotted_name(fn: Callable) -> str:
    """``package.module.function`` of a callable (its repr when it has no qualified name)."""
    qualname = getattr(fn, "__qualname__", None)
    return f"{getattr(fn, '__module__', None)}.{qualname}" if qualname else repr(fn)


def resolve_function(fn: str | Callable, field: str = "reward.oracle.fn") -> Callable:
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


def brevity(prompts: list[str], responses: list[str], **fields) -> list[float]:
    """Minus the number of words of each response: an example oracle, and a verbosity counterweight in
    ``reward=combined``."""
    return [-float(len(r.split())) for r in responses]
