"""Plain data types shared by the library, the callbacks and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """What every loss returns.

    loss:      scalar to back-propagate.
    losses:    per-term losses (detached), e.g. [B, K] for `sppo`, [B] for pair losses.
    log_ratio: mean of log pi_theta - log pi_t over the terms the loss used (detached scalar).
    target:    mean regression target over those terms (detached scalar; 0 for `dpo`, which has no
               regression target).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    log_ratio: torch.Tensor
    target: torch.Tensor


@dataclass
class Rollout:
    """One prompt's K sampled responses, scored.

    prompt_ids / response_ids are token ids (no padding); `scores` [K] and `preferences` [K][K], P(y_i > y_j | x),
    come from the oracle, `p_hat` is P_hat(y_k > pi_t | x) and `ref_logps` is log pi_t(y_k | x) (sum over
    response tokens). `fields` are the
    dataset columns named in ``data.fields``, handed to the oracle with the answer.
    """

    prompt: str
    prompt_ids: list[int]
    responses: list[str]
    response_ids: list[list[int]]
    answer: str | None = None
    scores: list[float] = field(default_factory=list)
    p_hat: list[float] = field(default_factory=list)
    ref_logps: list[float] = field(default_factory=list)
    preferences: list[list[float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.responses)
