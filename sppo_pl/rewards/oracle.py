"""The oracle protocol: scores, then K x K preferences, then P_hat (paper eq. 4.7).

An oracle is a plain class (no Lightning): training wraps it in :class:`callbacks.reward.RewardCallback`,
``python -m sppo_pl.eval`` calls it directly. For one prompt x and K responses y_1..y_K it gives

1. ``score(prompts, responses, **fields)``: one number per response (0/1 correctness, a reward model's
   logit, a user function's value); oracles without pointwise scores (a pairwise model) set
   ``has_scores = False`` and override :meth:`Oracle.judge` and :meth:`Oracle.compare` instead;
2. ``preferences(scores)``: the K x K matrix P[i, j] = P(y_i > y_j | x) (Bradley-Terry by default, hard
   0/1 comparisons for verifiers), or :meth:`Oracle.judge` straight from the model for pairwise oracles;
3. P_hat(y_i > pi_t | x) = mean_j P[i, j], :func:`sppo_pl.rewards.preference.p_hat`, filled into the
   rollouts by :func:`score_rollouts`.

``fields`` are the dataset fields of each row as keyword lists: ``answer`` always, plus the columns named
in ``data.fields``. Flags: ``is_verifier`` (scores are 0/1 correctness: their mean is also an accuracy),
``has_scores``, ``needs_answers`` (every prompt must have an answer, checked before anything loads).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from sppo_pl.rewards.preference import bradley_terry, p_hat
from sppo_pl.types import Rollout


class Oracle:
    """Base oracle: subclasses define :meth:`score`; scalar scores become preferences by Bradley-Terry."""

    is_verifier = False
    has_scores = True
    needs_answers = False

    @property
    def source(self) -> str:
        """How errors name this oracle."""
        return type(self).__name__

    def place(self, device: str | torch.device) -> None:
        """Put any model this oracle runs on ``device``, unless it was given one."""

    def score(self, prompts: list[str], responses: list[str], **fields: list) -> list[float]:
        """One score per (prompt, response)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or judge()")

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        """[..., K] scores -> [..., K, K] matrix of P(y_i > y_j | x)."""
        return bradley_terry(scores)

    def checked_score(self, prompts: list[str], responses: list[str], **fields: list) -> list[float]:
        """:meth:`score`, checked: one finite number per response, else an error naming the oracle."""
        return check_scores(self.score(prompts, responses, **fields), len(responses), self.source)

    def judge(self, rollouts: list[Rollout]) -> list[tuple[list[float], torch.Tensor]]:
        """(scores [K], preferences [K, K]) of every rollout's K responses, all scored in one call."""
        flat = self.checked_score(
            [r.prompt for r in rollouts for _ in r.responses],
            [y for r in rollouts for y in r.responses],
            **rollout_fields(rollouts, repeat=True),
        )
        out, start = [], 0
        for r in rollouts:
            scores = flat[start : start + r.k]
            out.append((scores, self.preferences(torch.tensor(scores, dtype=torch.float64))))
            start += r.k
        return out

    def compare(self, prompts: list[str], a: list[str], b: list[str], **fields: list) -> list[float]:
        """P(a_n > b_n | prompt_n) for each n: the preferences of the two responses' scores."""
        sa, sb = self.checked_score(prompts, a, **fields), self.checked_score(prompts, b, **fields)
        pref = self.preferences(torch.tensor([sa, sb], dtype=torch.float64).T)  # [N, 2, 2]
        return pref[:, 0, 1].tolist()


def score_rollouts(oracle: Oracle, rollouts: list[Rollout], include_self: bool = True) -> None:
    """Fill each rollout's ``scores`` [K], ``preferences`` [K, K] and ``p_hat`` = P_hat(y_k > pi_t | x)
    [K] (mean of the preference row, j = k included with ``include_self``), in place."""
    for r, (scores, pref) in zip(rollouts, oracle.judge(rollouts), strict=True):
        r.scores = [float(s) for s in scores]
        r.preferences = pref.double().tolist()
        r.p_hat = p_hat(pref, include_self=include_self).tolist()


def rollout_fields(rollouts: list[Rollout], repeat: bool = False) -> dict[str, list]:
    """The dataset fields of each rollout's row as keyword lists (``answer`` and ``Rollout.fields``),
    one entry per rollout, or per response with ``repeat``."""
    names = ["answer", *(rollouts[0].fields if rollouts else {})]
    out = {}
    for name in names:
        values = [r.answer if name == "answer" else r.fields[name] for r in rollouts]
        out[name] = [v for r, v in zip(rollouts, values) for _ in range(r.k)] if repeat else values
    return out


def oracle_from_config(reward: Any) -> Oracle:
    """The oracle of a ``reward`` config without its Lightning callback: ``reward.oracle`` when the node wraps
    one, else the node itself (a user's own oracle class, e.g. a :class:`RewardCallback` subclass that is its
    own oracle)."""
    from hydra.utils import instantiate

    if "oracle" in reward and reward.oracle is not None:
        return instantiate(reward.oracle)
    made = instantiate(reward)
    return getattr(made, "oracle", made)


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
