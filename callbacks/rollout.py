"""When rollouts happen: before each epoch's dataloader is built, from the policy as it stands then.

Lightning builds the train dataloader *before* ``on_train_epoch_start``. Rollouts for epoch k + 1 are
therefore made at the end of epoch k (``on_train_epoch_end``, before the epoch's checkpoint is written, so a
checkpoint carries the rollouts its next epoch trains on), and the data module asks for them itself when it
holds none for the epoch at hand (the first epoch, or a resume from a checkpoint without them). Either way
epoch k trains on samples from the policy as it stood at the start of epoch k. Before each generation, and
before validation, the policy's current weights are pushed into the running engine in place (once per
optimizer step: a sync is skipped when the policy has not changed since the last one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from callbacks.reward import RewardCallback
from sppo_pl.rollout.base import RolloutEngine, SamplingConfig
from sppo_pl.types import Rollout


class RolloutCallback(L.Callback):
    def __init__(
        self,
        engine: Callable[..., RolloutEngine],
        sampling: dict | SamplingConfig,
        val_max_tokens: int | None = None,
        save_dir: str | None = None,
    ):
        self.engine_factory = engine
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**sampling)
        self.val_sampling = SamplingConfig(
            n=1, temperature=0.0, max_tokens=val_max_tokens or self.sampling.max_tokens
        )
        self.save_dir = Path(save_dir) if save_dir else None
        self.engine: RolloutEngine | None = None
        self._synced_step: int | None = None
        self._last_sync_s = 0.0

    # ---- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if self.engine is None:
            self.engine = self.engine_factory(pl_module)
        pl_module.val_generate = lambda ids: self._greedy(trainer, pl_module, ids)
        trainer.datamodule.rollout_provider = lambda epoch: self.rollout(trainer, pl_module, epoch)

    def on_train_epoch_end(self, trainer, pl_module):
        nxt = trainer.current_epoch + 1
        if trainer.max_epochs is None or nxt < trainer.max_epochs:
            self.rollout(trainer, pl_module, nxt)

    # ---- work ----------------------------------------------------------------------------------------
    def sync(self, trainer, pl_module) -> float:
        """Push the policy into the engine unless it already holds this optimizer step's weights.

        Returns the seconds of the sync that put the current weights in the engine (done now or earlier,
        e.g. before validation).
        """
        if self._synced_step != trainer.global_step:
            start = time.perf_counter()
            self.engine.sync_weights(pl_module.named_weights())
            self._synced_step = trainer.global_step
            self._last_sync_s = time.perf_counter() - start
        return self._last_sync_s

    def _greedy(self, trainer, pl_module, prompt_ids: list[list[int]]) -> list[str]:
        self.sync(trainer, pl_module)
        return [g.texts[0] for g in self.engine.generate(prompt_ids, self.val_sampling)]

    def rollout(self, trainer, pl_module, epoch: int) -> list[Rollout]:
        """Sample, score, take pi_t log-probs, hand to the datamodule, save, log. For iteration ``epoch``."""
        dm = trainer.datamodule
        prompts = dm.next_prompts(epoch)
        sync_s = self.sync(trainer, pl_module)
        start = time.perf_counter()
        gens = self.engine.generate([p["prompt_ids"] for p in prompts], self.sampling)
        gen_s = time.perf_counter() - start
        rollouts = [
            Rollout(
                p["prompt"],
                p["prompt_ids"],
                g.texts,
                g.token_ids,
                p["answer"],
                extra={"finish": g.finish_reasons},
            )
            for p, g in zip(prompts, gens)
        ]
        start = time.perf_counter()
        oracle(trainer).score_rollouts(rollouts)
        score_s = time.perf_counter() - start
        start = time.perf_counter()
        pl_module.refresh_reference()
        pl_module.compute_ref_logps(rollouts, dm.tokenizer.pad_token_id)
        logp_s = time.perf_counter() - start
        dm.set_rollouts(rollouts, epoch, trainer.global_step)
        self._save(rollouts, epoch, trainer.global_step)
        n_tokens = sum(len(t) for g in gens for t in g.token_ids)
        metrics = rollout_metrics(rollouts, gen_s, sync_s, n_tokens) | {
            "rollout/score_s": score_s,
            "rollout/ref_logps_s": logp_s,
            "rollout/iteration": float(epoch),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return rollouts

    def _save(self, rollouts: list[Rollout], epoch: int, step: int) -> None:
        if self.save_dir is None:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"epoch_{epoch}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as f:
            for r in rollouts:
                row = {
                    "epoch": epoch,
                    "policy_step": step,
                    "prompt": r.prompt,
                    "answer": r.answer,
                    "responses": r.responses,
                    "scores": r.scores,
                    "win_rate": r.win_rate,
                    "ref_logps": r.ref_logps,
                    "finish_reasons": r.extra.get("finish"),
                }
                f.write(json.dumps(row) + "\n")
        tmp.replace(path)


def oracle(trainer) -> RewardCallback:
    """The run's reward callback (exactly one; a weighted mix of several is itself one callback)."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, RewardCallback)]
    if len(found) != 1:
        raise RuntimeError(f"expected exactly one reward callback (reward=...), found {len(found)}")
    return found[0]


def rollout_metrics(rollouts: list[Rollout], gen_s: float, sync_s: float, n_tokens: int) -> dict[str, float]:
    """The ``rollout/*`` metrics of DESIGN.md from one iteration's scored rollouts."""
    scores = torch.tensor([r.scores for r in rollouts], dtype=torch.float64)
    wins = torch.tensor([r.win_rate for r in rollouts], dtype=torch.float64)
    return {
        "rollout/reward_mean": float(scores.mean()),
        "rollout/win_rate_std": float(wins.std(dim=-1, unbiased=False).mean()),
        "rollout/tokens_per_s": n_tokens / max(gen_s, 1e-9),
        "rollout/gen_s": gen_s,
        "rollout/sync_s": sync_s,
        "rollout/response_len": n_tokens / max(1, scores.numel()),
    }
