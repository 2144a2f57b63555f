"""The reward callback: the run's oracle, at the times Lightning gives it.

A :class:`RewardCallback` wraps an oracle (:mod:`sppo_pl.rewards`: scores, then K x K preferences, then
P_hat) and does two things with it: it judges each iteration's rollouts (called by the rollout callback),
filling scores, the preference matrix and P_hat(y > pi_t | x); and it judges the greedy validation
responses, logging ``val/reward_mean`` (and ``val/acc`` for verifiers) and ``val/win_rate``, the
probability that each greedy response beats the starting policy's greedy response to the same prompt
(from the validation before training), under the same oracle.

Every ``conf/reward/*.yaml`` is this callback around an oracle (``reward.oracle._target_``). A custom
oracle is a subclass of :class:`sppo_pl.rewards.oracle.Oracle` (``reward.oracle._target_=my.Oracle``), or a
subclass of this callback that implements :meth:`Oracle.score` itself (``reward._target_=my.Callback``):
given no ``oracle``, the callback is its own oracle.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from sppo_pl.distributed import all_gather_list
from sppo_pl.rewards.oracle import Oracle, score_rollouts
from sppo_pl.types import Rollout

# validation batch columns that are not dataset fields
NOT_FIELDS = ("prompt", "prompt_ids", "responses", "val_weight")


class RewardCallback(Oracle, L.Callback):
    """The run's oracle (``oracle``, or this object itself when none is given) and the validation win-rate
    bookkeeping. ``include_self``: P_hat averages over all K samples, the response itself included (its
    entry is 1/2), as uclaml/SPPO does; ``False`` over the K - 1 others."""

    def __init__(self, oracle: Oracle | None = None, include_self: bool = True):
        if oracle is None and not _defines_oracle(type(self)):
            raise ValueError(
                f"reward: {type(self).__name__} has no oracle: give reward.oracle (an Oracle's _target_ node), or "
                "make reward._target_ a RewardCallback subclass that implements score()"
            )
        self.oracle = self if oracle is None else oracle
        self.include_self = include_self
        self.val_reward, self.val_win = MeanMetric(), MeanMetric()
        # prompt_key(prompt token ids) -> the starting policy's greedy response. Keyed by the tokens, not by
        # the prompt's text (a chat prompt's last user turn), so prompts that differ in their system turn or
        # history each keep their own
        self.start_responses: dict[str, str] = {}
        self._start_by_text: dict[str, str] = {}  # a checkpoint of sppo-pl before 2026-12-07 kept these
        self._val_start: dict[str, str] = {}

    def setup(self, trainer, pl_module, stage):
        self.oracle.place(pl_module.device)

    def score_rollouts(self, rollouts: list[Rollout]) -> None:
        """Fill ``scores``, ``preferences`` and ``p_hat`` = P_hat(y_k > pi_t | x) of every rollout."""
        score_rollouts(self.oracle, rollouts, self.include_self)

    # ---- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_reward.to(pl_module.device)  # synced across ranks at compute(), on the collective's device
        self.val_win.to(pl_module.device)
        self._val_start = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        prompts, responses = batch["prompt"], outputs["responses"]
        fields = {k: v for k, v in batch.items() if k not in NOT_FIELDS}
        # 0 for the repeats that pad the last prompts over several ranks: each prompt counts once
        weights = torch.tensor(batch.get("val_weight", [1.0] * len(prompts)), device=pl_module.device)
        oracle = self.oracle
        if oracle.has_scores:
            scores = oracle.checked_score(prompts, responses, **fields)
            self.val_reward.update(
                torch.tensor(scores, dtype=torch.float32, device=pl_module.device), weights
            )
        keys = [prompt_key(ids) for ids in batch["prompt_ids"]]
        if _iteration(trainer) == 0:  # a padding repeat's response must not replace its prompt's own
            self._val_start.update((k, y) for k, y, w in zip(keys, responses, weights.tolist()) if w > 0)
            return
        start = [self.start_responses.get(k, self._start_by_text.get(p)) for k, p in zip(keys, prompts)]
        known = [n for n, y in enumerate(start) if y is not None]
        if known:
            wins = oracle.compare(
                [prompts[n] for n in known],
                [responses[n] for n in known],
                [start[n] for n in known],
                **{k: [v[n] for n in known] for k, v in fields.items()},
            )
            self.val_win.update(
                torch.tensor(wins, dtype=torch.float32, device=pl_module.device), weights[known]
            )

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            self.val_reward.reset()
            self.val_win.reset()
            return
        iteration = _iteration(trainer)
        metrics = {"val/iteration": float(iteration)}
        if self.oracle.has_scores:
            metrics["val/reward_mean"] = float(self.val_reward.compute())
            if self.oracle.is_verifier:
                metrics["val/acc"] = metrics["val/reward_mean"]
        # compute() syncs over the ranks, so all of them must take it when any has a comparison
        if trainer.strategy.reduce_boolean_decision(bool(self.val_win.update_count), all=False):
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
        return {"start_by_prompt_ids": self.start_responses}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start_responses = dict(state_dict.get("start_by_prompt_ids", {}))
        self._start_by_text = dict(state_dict.get("start_responses", {}))


def prompt_key(prompt_ids) -> str:
    """A prompt's key among the starting responses: its token ids, as text (checkpoints keep it)."""
    return " ".join(str(int(t)) for t in prompt_ids)


def _iteration(trainer) -> int:
    """The self-play iteration a validation belongs to: 0 before training, k after the k-th."""
    return trainer.current_epoch + (1 if trainer.state.fn == TrainerFn.FITTING else 0)


def _defines_oracle(cls: type) -> bool:
    """Whether a RewardCallback subclass implements the oracle protocol itself (``score`` or ``judge``)."""
    return cls.score is not Oracle.score or cls.judge is not Oracle.judge
