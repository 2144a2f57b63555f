"""Preference oracles as Lightning callbacks.

A reward callback does two things at the times Lightning gives it: it judges each iteration's rollouts
(called by the rollout callback): scores and the K x K preferences, turned into P_hat(y > pi_t | x); and it
judges the greedy validation responses, logging ``val/reward_mean`` (and ``val/acc`` for verifiers) and
``val/win_rate``, the win rate of each greedy response against the starting policy's greedy response to
the same prompt (from the validation before training), under the same oracle. What the scores and
preferences *are* lives in :mod:`sppo_pl.rewards`.

A custom oracle subclasses :class:`RewardCallback` and implements :meth:`RewardCallback.score`; an oracle
without pointwise scores (a pairwise model) overrides :meth:`RewardCallback.judge` and
:meth:`RewardCallback.compare` instead. Every method gets the dataset fields of each row as keyword lists
(``answer`` always, plus the columns named in ``data.fields``).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from sppo_pl.distributed import all_gather_list
from sppo_pl.rewards.function import check_scores
from sppo_pl.rewards.preference import bradley_terry, hard_preference, win_rate
from sppo_pl.types import Rollout

NOT_FIELDS = ("prompt", "prompt_ids", "responses")  # validation batch columns that are not dataset fields


class RewardCallback(L.Callback):
    """Base oracle: subclasses define ``score``; scalar scores become preferences by Bradley-Terry."""

    is_verifier = False  # scores are 0/1 correctness: also log val/acc
    has_scores = True  # pointwise scores exist (val/reward_mean); False for pairwise models
    needs_answers = False  # True: every prompt needs an answer, checked when the run starts

    def __init__(self, include_self: bool = True):
        self.include_self = include_self
        self.val_reward, self.val_win = MeanMetric(), MeanMetric()
        self.start_responses: dict[str, str] = {}  # prompt -> the starting policy's greedy response
        self._val_start: dict[str, str] = {}

    def setup(self, trainer, pl_module, stage):
        self.place(pl_module.device)

    def place(self, device: str | torch.device) -> None:
        """Put any model this oracle runs on ``device``, unless it was given one (``reward.device``)."""

    def score(self, prompts: list[str], responses: list[str], **fields: list) -> list[float]:
        """One score per (prompt, response); ``fields`` are the rows' dataset fields (``answer``, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or judge()")

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        """[..., K] scores -> [..., K, K] matrix of P(y_i > y_j | x)."""
        return bradley_terry(scores)

    def checked_score(self, prompts: list[str], responses: list[str], **fields: list) -> list[float]:
        """:meth:`score`, checked: one finite number per response, else an error naming the oracle."""
        return check_scores(self.score(prompts, responses, **fields), len(responses), type(self).__name__)

    def judge(self, rollouts: list[Rollout]) -> list[tuple[list[float], torch.Tensor]]:
        """(scores [K], preferences [K, K]) of every rollout's K responses, scored in one call."""
        flat = self.checked_score(
            [r.prompt for r in rollouts for _ in r.responses],
            [y for r in rollouts for y in r.responses],
            **rollout_fields(rollouts, repeat=True),
        )
        out, start = [], 0
        for r in rollouts:
            scores = [float(s) for s in flat[start : start + r.k]]
            out.append((scores, self.preferences(torch.tensor(scores, dtype=torch.float64))))
            start += r.k
        return out

    def compare(self, prompts: list[str], a: list[str], b: list[str], **fields: list) -> list[float]:
        """P(a_n > b_n | prompt_n) for each n: the preferences of the two responses' scores."""
        sa, sb = self.checked_score(prompts, a, **fields), self.checked_score(prompts, b, **fields)
        pref = self.preferences(torch.tensor([sa, sb], dtype=torch.float64).T)  # [N, 2, 2]
        return pref[:, 0, 1].tolist()

    def score_rollouts(self, rollouts: list[Rollout]) -> None:
        """Fill ``scores`` and ``win_rate`` = P_hat(y_k > pi_t | x) of every rollout, in place."""
        for r, (scores, pref) in zip(rollouts, self.judge(rollouts), strict=True):
            r.scores = scores
            r.win_rate = win_rate(pref, include_self=self.include_self).tolist()

    # ---- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_reward.to(pl_module.device)  # synced across ranks at compute(), on the collective's device
        self.val_win.to(pl_module.device)
        self._val_start = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        prompts, responses = batch["prompt"], outputs["responses"]
        fields = {k: v for k, v in batch.items() if k not in NOT_FIELDS}
        if self.has_scores:
            scores = self.checked_score(prompts, responses, **fields)
            self.val_reward.update(torch.tensor(scores, dtype=torch.float32, device=pl_module.device))
        if _iteration(trainer) == 0:
            self._val_start.update(zip(prompts, responses))
            return
        known = [n for n, p in enumerate(prompts) if p in self.start_responses]
        if known:
            wins = self.compare(
                [prompts[n] for n in known],
                [responses[n] for n in known],
                [self.start_responses[prompts[n]] for n in known],
                **{k: [v[n] for n in known] for k, v in fields.items()},
            )
            self.val_win.update(torch.tensor(wins, dtype=torch.float32, device=pl_module.device))

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            self.val_reward.reset()
            self.val_win.reset()
            return
        iteration = _iteration(trainer)
        metrics = {"val/iteration": float(iteration)}
        if self.has_scores:
            metrics["val/reward_mean"] = float(self.val_reward.compute())
            if self.is_verifier:
                metrics["val/acc"] = metrics["val/reward_mean"]
        if self.val_win.update_count:
            metrics["val/win_rate"] = float(self.val_win.compute())
        if iteration == 0:  # every rank holds all the starting responses (each validated its shard)
            self.start_responses = {
                p: y for part in all_gather_list([self._val_start]) for p, y in part.items()
            }
        self.val_reward.reset()
        self.val_win.reset()
        for name, v in metrics.items():
            # Already reduced over ranks by the metric, so the sync averages equal values. It also keeps
            # Lightning quiet when vLLM's in-process engine has initialised torch.distributed on one device.
            pl_module.log(name, v, prog_bar=name in ("val/acc", "val/win_rate"), sync_dist=True)

    # ---- checkpoints: a resumed run compares against the same starting responses ----------------------
    def state_dict(self) -> dict:
        return {"start_responses": self.start_responses}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start_responses = dict(state_dict.get("start_responses", {}))


def _iteration(trainer) -> int:
    """The self-play iteration a validation belongs to: 0 before training, k after the k-th."""
    return trainer.current_epoch + (1 if trainer.state.fn == TrainerFn.FITTING else 0)


def rollout_fields(rollouts: list[Rollout], repeat: bool = False) -> dict[str, list]:
    """The dataset fields of each rollout's row as keyword lists (``answer`` and ``Rollout.fields``),
    one entry per rollout, or per response with ``repeat``."""
    names = ["answer", *(rollouts[0].fields if rollouts else {})]
    out = {}
    for name in names:
        values = [r.answer if name == "answer" else r.fields[name] for r in rollouts]
        out[name] = [v for r, v in zip(rollouts, values) for _ in range(r.k)] if repeat else values
    return out


class MathReward(RewardCallback):
    """Rule-based verifier: 1 if the response's final answer equals the gold answer, else 0.

    The final answer is the last ``\\boxed{}``; without one, ``fallback`` decides ("last_number", "math_verify"
    or "none", see :func:`sppo_pl.rewards.math.is_correct`); ``numeric=True`` accepts only number literals.
    Equivalence is decided by math-verify. Preferences are hard: P(y_i > y_j) = 1{s_i > s_j} + 1/2 1{s_i = s_j}.
    """

    is_verifier = True
    needs_answers = True

    def __init__(self, fallback: str = "last_number", numeric: bool = False, include_self: bool = True):
        from sppo_pl.rewards.math import check_fallback

        super().__init__(include_self)
        self.fallback, self.numeric = check_fallback(fallback, "reward.fallback"), numeric

    def score(self, prompts, responses, answer=None, **fields):
        from sppo_pl.rewards.math import correctness_scores

        missing = [i for i, a in enumerate(answer or [None] * len(responses)) if a is None]
        if missing:
            raise ValueError(
                f"reward=math needs an answer for every prompt (data.answer_key); {prompts[missing[0]]!r} has none"
            )
        return correctness_scores(responses, answer, self.fallback, self.numeric)

    def preferences(self, scores):
        return hard_preference(scores)
