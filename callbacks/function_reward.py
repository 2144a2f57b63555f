"""``reward=function``: any user function ``(prompts, responses, **fields) -> scores`` as the oracle."""

from __future__ import annotations

from collections.abc import Callable

import torch

from callbacks.reward import RewardCallback
from sppo_pl.rewards.function import check_scores, resolve_function
from sppo_pl.rewards.preference import bradley_terry, hard_preference


class FunctionReward(RewardCallback):
    """Scores from ``fn(prompts, responses, answer=[...], **fields)``: one number per response.

    ``fn`` is a callable or its dotted path (``reward.fn=my_pkg.rewards.brevity``); the keyword lists are
    the rows' answers and the dataset columns named in ``data.fields``. Preferences are Bradley-Terry with
    ``scale`` (``preference=bradley_terry``) or hard comparisons (``preference=hard``, for 0/1 checks);
    ``verifier=true`` also logs the mean score as ``val/acc``.
    """

    def __init__(
        self,
        fn: str | Callable,
        preference: str = "bradley_terry",
        scale: float = 1.0,
        verifier: bool = False,
        include_self: bool = True,
    ):
        super().__init__(include_self)
        if preference not in ("bradley_terry", "hard"):
            raise ValueError(f"reward.preference must be 'bradley_terry' or 'hard', got {preference!r}")
        self.fn = resolve_function(fn)
        self.name = fn if isinstance(fn, str) else dotted_name(fn)
        self.preference, self.scale, self.is_verifier = preference, scale, verifier

    def score(self, prompts, responses, **fields):
        return self.fn(prompts, responses, **fields)

    def checked_score(self, prompts, responses, **fields):
        """The function's scores, checked (:func:`sppo_pl.rewards.function.check_scores`): errors name it as
        ``reward.fn=<dotted path>``."""
        return check_scores(
            self.score(prompts, responses, **fields), len(responses), f"reward.fn={self.name}"
        )

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        return hard_preference(scores) if self.preference == "hard" else bradley_terry(scores, self.scale)


def dotted_name(fn: Callable) -> str:
    """``package.module.function`` of a callable (its repr when it has no qualified name)."""
    qualname = getattr(fn, "__qualname__", None)
    return f"{getattr(fn, '__module__', None)}.{qualname}" if qualname else repr(fn)
