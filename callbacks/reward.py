"""Preference oracles as Lightning callbacks.

A reward callback does two things at the times Lightning gives it: it scores each iteration's rollouts
(called by the rollout callback, which turns the K x K preferences into P_hat(y > pi_t | x)), and it
scores the greedy validation responses, logging ``val/reward_mean`` (and ``val/acc`` for verifiers).
What the scores and preferences *are* lives in :mod:`sppo_pl.rewards`. A custom oracle subclasses
:class:`RewardCallback` and implements :meth:`score`.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from sppo_pl.rewards.preference import bradley_terry, hard_preference, win_rate
from sppo_pl.types import Rollout


class RewardCallback(L.Callback):
    """Base oracle: subclasses define ``score``; scalar scores become preferences by Bradley-Terry."""

    is_verifier = False  # scores are 0/1 correctness: also log val/acc

    def __init__(self, include_self: bool = True):
        self.include_self = include_self
        self.val_reward = MeanMetric()
        self.history: list[dict] = []

    def score(self, prompts: list[str], responses: list[str], answers: list[str | None]) -> list[float]:
        raise NotImplementedError

    def preferences(self, scores: torch.Tensor) -> torch.Tensor:
        """[K] scores -> [K, K] matrix of P(y_i > y_j | x)."""
        return bradley_terry(scores)

    def score_rollouts(self, rollouts: list[Rollout]) -> None:
        """Fill ``scores`` and ``win_rate`` = P_hat(y_k > pi_t | x) of every rollout, in place."""
        prompts = [r.prompt for r in rollouts for _ in r.responses]
        answers = [r.answer for r in rollouts for _ in r.responses]
        flat = self.score(prompts, [y for r in rollouts for y in r.responses], answers)
        for i, r in enumerate(rollouts):
            r.scores = [float(s) for s in flat[i * r.k : (i + 1) * r.k]]
            pref = self.preferences(torch.tensor(r.scores, dtype=torch.float64))
            r.win_rate = win_rate(pref, include_self=self.include_self).tolist()

    # ---- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_reward.to(pl_module.device)  # synced across ranks at compute(), on the collective's device

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        scores = self.score(batch["prompt"], outputs["responses"], batch["answer"])
        self.val_reward.update(torch.tensor(scores, dtype=torch.float32, device=pl_module.device))

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            self.val_reward.reset()
            return
        value = float(self.val_reward.compute())
        self.val_reward.reset()
        iteration = trainer.current_epoch + (1 if trainer.state.fn == TrainerFn.FITTING else 0)
        metrics = {"val/reward_mean": value, "val/iteration": float(iteration)}
        if self.is_verifier:
            metrics["val/acc"] = value
        for name, v in metrics.items():
            # Already reduced over ranks by the metric, so the sync averages equal values. It also keeps
            # Lightning quiet when vLLM's in-process engine has initialised torch.distributed on one device.
            pl_module.log(name, v, prog_bar=name == "val/acc", sync_dist=True)
        self.history.append({"iteration": iteration, **metrics})


class MathReward(RewardCallback):
    """Rule-based verifier: 1 if the response's final answer equals the gold answer, else 0.

    The final answer is the last ``\\boxed{}``; without one, ``fallback`` decides ("last_number", "math_verify"
    or "none", see :func:`sppo_pl.rewards.math.is_correct`); ``numeric=True`` accepts only number literals.
    Equivalence is decided by math-verify. Preferences are hard: P(y_i > y_j) = 1{s_i > s_j} + 1/2 1{s_i = s_j}.
    """

    is_verifier = True

    def __init__(self, fallback: str = "last_number", numeric: bool = False, include_self: bool = True):
        from sppo_pl.rewards.math import check_fallback

        super().__init__(include_self)
        self.fallback, self.numeric = check_fallback(fallback, "reward.fallback"), numeric

    def score(self, prompts, responses, answers):
        from sppo_pl.rewards.math import correctness_scores

        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            raise ValueError(f"reward=math needs an answer for every prompt; row {missing[0]} has none")
        return correctness_scores(responses, answers, self.fallback, self.numeric)

    def preferences(self, scores):
        return hard_preference(scores)
