"""When rollouts happen: before each epoch's dataloader is built, from the policy as it stands then.

Lightning builds the train dataloader *before* ``on_train_epoch_start``. Rollouts for epoch k + 1 are
therefore made at the end of epoch k (``on_train_epoch_end``, before the epoch's checkpoint is written, so a
checkpoint carries the rollouts its next epoch trains on), and the data module asks for them itself when it
holds none for the epoch at hand (the first epoch, or a resume from a checkpoint without them). Either way
epoch k trains on samples from the policy as it stood at the start of epoch k. Before each generation, and
before validation, the policy's current weights are pushed into the running engine in place (once per
optimizer step: a sync is skipped when the policy has not changed since the last one).

On several ranks (``rollout.mode``): with ``colocate`` (default, as TRL's colocate mode) every rank has an
engine and samples its contiguous share of the prompts; with ``rank0`` only rank 0 has one and generates
for all. Either way each prompt's K samples are scored together on one rank, every rank computes pi_t
log-probs for its share (the sharded forward is collective), and the scored rollouts are gathered so that
every rank holds the same full list (the data module then gives each rank its shard). Every rank takes
part in each weight sync, since gathering a sharded parameter is a collective.

Validation generates here too: the weights are pushed in ``on_validation_epoch_start`` and each batch's
greedy responses are put into the batch in ``on_validation_batch_start``, both outside the module's step.
(Under FSDP1 Lightning runs ``validation_step`` inside the root unit's forward, where parameters cannot be
gathered, and under ``bf16-mixed`` inside ``torch.autocast``.)

An engine with sleep mode (``rollout.engine.sleep_level``) is woken around each generation and put back to
sleep after it: weights first, then the sync, then the KV cache, so training never shares the GPU with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from callbacks.reward import RewardCallback
from sppo_pl.distributed import all_gather_list, broadcast_from_zero, drain, rank_and_world, shard_bounds
from sppo_pl.report import write_jsonl_atomic
from sppo_pl.rollout.base import Generation, RolloutEngine, SamplingConfig, request_seeds
from sppo_pl.types import Rollout


class RolloutCallback(L.Callback):
    def __init__(
        self,
        engine: Callable[..., RolloutEngine],
        sampling: dict | SamplingConfig,
        val_max_tokens: int | None = None,
        save_dir: str | None = None,
        mode: str = "colocate",
        seed: int = 0,
    ):
        if mode not in ("colocate", "rank0"):
            raise ValueError(f"rollout.mode must be 'colocate' or 'rank0', got {mode!r}")
        self.mode, self.seed = mode, seed
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
        world, per_epoch = trainer.world_size, trainer.datamodule.prompts_per_epoch
        if per_epoch % world:
            raise ValueError(
                f"data.prompts_per_epoch={per_epoch} must be a multiple of the number of ranks ({world}): "
                "every rank gets the same share"
            )
        if self.engine is None:
            generates = self.mode == "colocate" or trainer.global_rank == 0
            self.engine = self.engine_factory(pl_module, generates=generates)
        trainer.datamodule.rollout_provider = lambda epoch: self.rollout(trainer, pl_module, epoch)

    def on_validation_epoch_start(self, trainer, pl_module):
        self.wake_and_sync(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """The batch's greedy responses, into the batch (``validation_step`` hands them to the oracle)."""
        batch["responses"] = [g.texts[0] for g in self.generate_own(batch["prompt_ids"], self.val_sampling)]

    def on_validation_epoch_end(self, trainer, pl_module):
        self.sleep()

    def on_train_epoch_end(self, trainer, pl_module):
        nxt = trainer.current_epoch + 1
        if trainer.max_epochs is None or nxt < trainer.max_epochs:
            self.rollout(trainer, pl_module, nxt)

    # ---- work ----------------------------------------------------------------------------------------
    def wake_and_sync(self, trainer, pl_module) -> float:
        """Make the engine ready to generate from the current policy: wake its weights (if it sleeps), push
        the policy in, then wake its KV cache. Returns the seconds of the sync (see :meth:`sync`)."""
        wake = getattr(self.engine, "wake_up", None)
        if wake is not None:
            wake(["weights"])
        sync_s = self.sync(trainer, pl_module)
        if wake is not None:
            wake(["kv_cache"])
        return sync_s

    def sleep(self) -> None:
        """Hand the engine's GPU memory back until the next generation (a no-op without sleep mode)."""
        sleep = getattr(self.engine, "sleep", None)
        if sleep is not None:
            sleep()

    def sync(self, trainer, pl_module) -> float:
        """Push the policy into the engine unless it already holds this optimizer step's weights (an
        engine that dropped its weights while asleep always gets them again).

        Returns the seconds of the sync that put the current weights in the engine (done now or earlier,
        e.g. before validation).
        """
        # every rank must decide alike (a sharded stream is collective): rank 0's engine decides
        dropped = broadcast_from_zero(bool(getattr(self.engine, "weights_dropped", False)))
        if self._synced_step != trainer.global_step or dropped:
            start = time.perf_counter()
            stream = pl_module.named_weights()
            self.engine.sync_weights(stream)
            drain(stream)  # the gathers must line up on every rank, even if an engine stopped early
            self._synced_step = trainer.global_step
            self._last_sync_s = time.perf_counter() - start
        return self._last_sync_s

    def generate_own(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int] | None = None
    ) -> list[Generation]:
        """Generations for this rank's own prompts: by its engine, or (mode rank0) by rank 0's for all."""
        rank, world = rank_and_world()
        if world == 1 or self.mode == "colocate":
            return self.engine.generate(prompt_ids, sampling, seeds)
        asked = all_gather_list([(prompt_ids, seeds)])
        if rank == 0:
            flat_ids = [p for ids, _ in asked for p in ids]
            flat_seeds = None if seeds is None else [s for _, ss in asked for s in ss]
            gens = self.engine.generate(flat_ids, sampling, flat_seeds)
        answer = broadcast_from_zero(gens if rank == 0 else None)
        start = sum(len(ids) for ids, _ in asked[:rank])
        return answer[start : start + len(prompt_ids)]

    def rollout(self, trainer, pl_module, epoch: int) -> list[Rollout]:
        """Sample, score, take pi_t log-probs, hand to the datamodule, save, log. For iteration ``epoch``.

        Each rank works on its share of the prompts; the scored rollouts are gathered in prompt order.
        """
        dm = trainer.datamodule
        every = dm.next_prompts(epoch)
        a, b = shard_bounds(len(every), *rank_and_world())
        prompts, seeds = every[a:b], request_seeds(self.seed, epoch, len(every))[a:b]
        sync_s = self.wake_and_sync(trainer, pl_module)
        start = time.perf_counter()
        gens = self.generate_own([p["prompt_ids"] for p in prompts], self.sampling, seeds)
        gen_s = time.perf_counter() - start
        self.sleep()
        rollouts = [
            Rollout(
                p["prompt"],
                p["prompt_ids"],
                g.texts,
                g.token_ids,
                p["answer"],
                extra={"finish": g.finish_reasons},
                fields={k: v for k, v in p.items() if k not in ("prompt", "prompt_ids", "answer")},
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
        rollouts = all_gather_list(rollouts)
        dm.set_rollouts(rollouts, epoch, trainer.global_step)
        if trainer.is_global_zero:
            self._save(rollouts, epoch, trainer.global_step)
        n_tokens = sum(len(t) for r in rollouts for t in r.response_ids)
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
        rows = (
            {
                "epoch": epoch,
                "policy_step": step,
                "prompt": r.prompt,
                "answer": r.answer,
                "responses": r.responses,
                "scores": r.scores,
                "win_rate": r.win_rate,
                "ref_logps": r.ref_logps,
                "finish_reasons": r.extra.get("finish"),
                **({"fields": r.fields} if r.fields else {}),
            }
            for r in rollouts
        )
        write_jsonl_atomic(self.save_dir / f"epoch_{epoch}.jsonl", rows)


def oracle(trainer) -> RewardCallback:
    """The run's reward callback (exactly one; a weighted mix of several is itself one callback)."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, RewardCallback)]
    if len(found) != 1:
        raise RuntimeError(f"expected exactly one reward callback (reward=...), found {len(found)}")
    return found[0]


def rollout_metrics(rollouts: list[Rollout], gen_s: float, sync_s: float, n_tokens: int) -> dict[str, float]:
    """The ``rollout/*`` metrics (README, "What a run writes") from one iteration's scored rollouts."""
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
