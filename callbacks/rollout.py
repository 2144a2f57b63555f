"""One self-play iteration, top to bottom: at the start of iteration k this callback samples the prompts of
iteration k from the policy as it stands, saves the generations, scores them with its oracle, takes the pi_t
log-probs and hands the scored rollouts to the data module, which batches them for the iteration.

Lightning builds the iteration's train dataloader before ``on_train_epoch_start``; the data module's dataset has
a length known in advance (``data.prompts_per_iteration`` prompt groups) and is filled here, before its first
batch is read. By then the previous iteration's checkpoint is on disk (ModelCheckpoint writes it at that
iteration's end), so a failure while making rollouts (an oracle error, a missing answer) loses nothing that
was trained. The generations are saved (``rollouts/epoch_K.generated.jsonl``) before they are scored: a
resumed run that finds them, sampled by the same run (not a fresh run started in the same directory) at the
same policy step for the same prompts, with the same seeds, model path and ``rollout.sampling``, scores them
again instead of sampling anew.
Before each generation, and before validation, the policy's current weights are pushed into the running
engine in place (once per optimizer step: a sync is skipped when the policy has not changed since the last).

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

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from functools import partial
from pathlib import Path

import lightning as L
import torch

from callbacks.reward import RewardCallback
from sppo_pl.distributed import all_gather_list, broadcast_from_zero, drain, rank_and_world, shard_bounds
from sppo_pl.logprobs import summed_token_logps
from sppo_pl.report import write_jsonl_atomic
from sppo_pl.rollout.base import (
    Generation,
    RolloutEngine,
    SamplingConfig,
    check_drop_ties,
    check_max_rounds,
    check_rollout_mode,
    dynamic_sampling,
    request_seeds,
    validation_sampling,
)
from sppo_pl.rollout.hf_engine import HFEngine
from sppo_pl.types import Rollout

log = logging.getLogger(__name__)


class RolloutCallback(L.Callback):
    def __init__(
        self,
        engine: Callable[..., RolloutEngine],
        sampling: dict | SamplingConfig,
        val_max_tokens: int | None = None,
        save_dir: str | None = None,
        mode: str = "colocate",
        seed: int = 0,
        oracle: RewardCallback | None = None,
        drop_ties: bool | str = False,
        max_rounds: int = 3,
    ):
        check_rollout_mode(mode)
        check_max_rounds(max_rounds)
        check_drop_ties(drop_ties)
        self.mode, self.seed = mode, seed
        self.drop_ties, self.max_rounds = drop_ties, max_rounds
        self.oracle = oracle  # the run's reward callback, handed over by training.build
        self.engine_factory = engine
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**sampling)
        self.val_sampling = validation_sampling(self.sampling, val_max_tokens)
        self.save_dir = Path(save_dir) if save_dir else None
        self.engine: RolloutEngine | None = None
        self._synced_step: int | None = None
        self._last_sync_s = 0.0
        # this run's identity, kept in its checkpoints: a resumed run reuses its own saved generations, a run
        # started afresh in an old run's directory never those of the old run (rank 0's, once set up)
        self.run_id = uuid.uuid4().hex
        # which launch (process start) trained the policy's weights: this launch's id once it has taken a
        # training step, else that of the launch that wrote the checkpoint it resumed from. Saved generations
        # carry it, so a run resumed from an older checkpoint and trained again (other settings, or GPU
        # non-determinism) to the same step never reuses what a policy it no longer has sampled.
        self.launch_id = uuid.uuid4().hex
        self.lineage = self.launch_id

    # ---- hooks ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "lineage": self.lineage}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run takes on the identity of the run that wrote the checkpoint, and its policy the
        lineage of the checkpoint's weights (Lightning restores callbacks after their ``setup``)."""
        self.run_id = state_dict.get("run_id", self.run_id)
        self.lineage = state_dict.get("lineage", "unknown")  # an older checkpoint's: reuse nothing

    def setup(self, trainer, pl_module, stage):
        self.run_id = broadcast_from_zero(self.run_id)
        self.launch_id = broadcast_from_zero(self.launch_id)
        self.lineage = self.launch_id
        world, per_iteration = trainer.world_size, trainer.datamodule.prompts_per_iteration
        if per_iteration % world:
            raise ValueError(
                f"data.prompts_per_iteration={per_iteration} must be a multiple of the number of ranks ({world}): "
                "every rank gets the same share"
            )
        if self.oracle is None:
            raise ValueError(
                "the rollout callback needs its oracle: RolloutCallback(..., oracle=<reward callback>)"
            )
        self.drop_ties = dynamic_sampling(self.drop_ties, self.oracle.oracle.is_verifier, self.sampling.n)
        log.info("rollout: dynamic sampling (drop_ties) %s", "on" if self.drop_ties else "off")
        if self.engine is None:
            self.engine = self.make_engine(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage):
        """Fitting is over: shut the engine down (``close``, when it has one) so its memory is handed back
        before the next job of a sweep starts in the same process; a later fit builds a new one. A validation
        before fitting keeps it."""
        if stage == "fit":
            self.close_engine()

    def on_exception(self, trainer, pl_module, exception):
        """A run that fails (Lightning calls no teardown then) hands its engine's memory back too: a sweep's
        next trial, or the user's next run in this process, starts without it."""
        self.close_engine()

    def close_engine(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
        self.engine = None
        self._synced_step = None

    def on_validation_epoch_start(self, trainer, pl_module):
        self.wake_and_sync(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """The batch's greedy responses, into the batch (``validation_step`` hands them to the oracle)."""
        batch["responses"] = [g.texts[0] for g in self.generate_own(batch["prompt_ids"], self.val_sampling)]

    def on_validation_epoch_end(self, trainer, pl_module):
        self.sleep()

    def on_train_start(self, trainer, pl_module):
        """A run resumed in the middle of an iteration (e.g. from SLURM's requeue checkpoint) skips
        ``on_train_epoch_start``: its rollouts came back with the checkpoint, and the loss sees them here."""
        if trainer.datamodule.rollout_iteration == trainer.current_epoch:
            pl_module.begin_iteration(trainer.datamodule.rollouts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lineage = self.launch_id  # the weights are this launch's own from here on

    def on_train_epoch_start(self, trainer, pl_module):
        """Iteration k's rollouts, made before the iteration's first batch is read (see the module docstring)."""
        dm, iteration = trainer.datamodule, trainer.current_epoch
        if dm.rollout_iteration != iteration:
            self.rollout(trainer, pl_module, iteration)
        pl_module.begin_iteration(dm.rollouts)

    # ---- work ----------------------------------------------------------------------------------------
    def make_engine(self, trainer, pl_module) -> RolloutEngine:
        """The engine from ``rollout.engine`` (its class and settings, a partial), plus what only the run
        knows: a rank that leaves generation to rank 0 holds its class's ``peer()``; Hugging Face
        ``generate`` samples from the policy being trained."""
        factory = self.engine_factory
        cls = factory.func if isinstance(factory, partial) else factory
        if not (self.mode == "colocate" or trainer.global_rank == 0):
            return cls.peer()
        if isinstance(cls, type) and issubclass(cls, HFEngine):
            return factory(model=lambda: pl_module.policy)
        return factory()

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

        Returns the seconds of the sync done now, 0.0 when none was needed (``_last_sync_s`` keeps the last).
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
        return 0.0

    def generate_own(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        seeds: list[int] | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """Generations for this rank's own prompts: by its engine, or (mode rank0) by rank 0's for all;
        with each sampled token's log-prob when ``logprobs`` (asked only then: a user's engine may not take it)."""
        rank, world = rank_and_world()
        extra = {"logprobs": True} if logprobs else {}
        if world == 1 or self.mode == "colocate":
            return self.engine.generate(prompt_ids, sampling, seeds, **extra)
        asked = all_gather_list([(prompt_ids, seeds)])
        if rank == 0:
            flat_ids = [p for ids, _ in asked for p in ids]
            flat_seeds = None if seeds is None else [s for _, ss in asked for s in ss]
            gens = self.engine.generate(flat_ids, sampling, flat_seeds, **extra)
        answer = broadcast_from_zero(gens if rank == 0 else None)
        start = sum(len(ids) for ids, _ in asked[:rank])
        return answer[start : start + len(prompt_ids)]

    def rollout(self, trainer, pl_module, iteration: int) -> list[Rollout]:
        """Sample, score, take pi_t log-probs, hand to the datamodule, save, log. For iteration ``iteration``.

        With ``drop_ties`` (DAPO's dynamic sampling) the prompts whose K samples all tie (every P_hat 1/2: no
        preference, nothing to learn) are set aside and fresh prompts are sampled, up to ``max_rounds``
        rounds, until ``prompts_per_iteration`` informative groups are in hand; if the rounds run out first,
        tied groups fill the rest, so the iteration always trains on its full budget. A prompt that a refill
        round draws again (its block crossed into the split's next pass) is taken only when nothing else is left.
        """
        dm = trainer.datamodule
        budget, rounds = dm.prompts_per_iteration, (self.max_rounds if self.drop_ties else 1)
        timing = {"gen_s": None, "sync_s": 0.0, "score_s": 0.0, "ref_logps_s": 0.0, "sampled_tokens": 0}
        kept, tied, repeats, earlier = [], [], [], set()
        for rnd in range(rounds):
            scored = self.sample_round(trainer, pl_module, iteration, rnd, rounds, timing)
            for r in scored:
                if prompt_row(r) in earlier:  # a refill round that crossed into the next pass of the split
                    repeats.append(r)
                else:
                    (tied if self.drop_ties and is_tied(r) else kept).append(r)
            earlier |= {prompt_row(r) for r in scored}
            if len(kept) >= budget:
                break
        rollouts = (kept + tied + repeats)[:budget]
        start = time.perf_counter()
        self.policy_pass(pl_module, rollouts, dm.tokenizer.pad_token_id)
        timing["ref_logps_s"] += time.perf_counter() - start
        dm.set_rollouts(rollouts, iteration, trainer.global_step)
        if trainer.is_global_zero:
            self._save(rollouts, iteration, trainer.global_step)
        n_tokens = sum(len(t) for r in rollouts for t in r.response_ids)
        # the iteration's syncs; none when the weights went in earlier at this step (before validation): that one
        sync_s = timing.pop("sync_s") or self._last_sync_s
        metrics = rollout_metrics(
            rollouts, timing.pop("gen_s"), sync_s, n_tokens, timing.pop("sampled_tokens")
        ) | {
            "rollout/score_s": timing["score_s"],
            "rollout/ref_logps_s": timing["ref_logps_s"],
            "rollout/iteration": float(iteration),
        }
        if self.drop_ties:
            sampled = len(kept) + len(tied)
            metrics |= {"rollout/rounds": float(rnd + 1), "rollout/tied_fraction": len(tied) / sampled}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return rollouts

    def sample_round(self, trainer, pl_module, iteration: int, rnd: int, rounds: int, timing: dict):
        """One round of the iteration's prompts, sampled, scored and with the engine's pi_t log-probs when it
        has them, gathered in prompt order on every rank (each rank works on its share); seconds are added to
        ``timing``."""
        dm = trainer.datamodule
        every = dm.next_prompts(iteration, rnd, rounds)
        a, b = shard_bounds(len(every), *rank_and_world())
        gens, gen_s, sync_s = self.generations(trainer, pl_module, iteration, every, rnd)
        have_logprobs = all(g.logprobs is not None for g in gens)  # alike on every rank
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
            for p, g in zip(every[a:b], gens[a:b])
        ]
        start = time.perf_counter()
        self.oracle.score_rollouts(rollouts)
        timing["score_s"] += time.perf_counter() - start
        if pl_module.hparams.reference == "engine" and have_logprobs:
            for r, g in zip(rollouts, gens[a:b], strict=True):
                r.ref_logps = summed_token_logps(g.logprobs, r.response_ids)
        if gen_s is not None:
            timing["gen_s"] = (timing["gen_s"] or 0.0) + gen_s
            timing["sampled_tokens"] += sum(len(t) for g in gens for t in g.token_ids)
        timing["sync_s"] += sync_s
        return all_gather_list(rollouts)

    @staticmethod
    def policy_pass(pl_module, rollouts: list[Rollout], pad_id: int) -> None:
        """Fill log pi_t(y | x) of the iteration's rollouts that lack it (``module.reference`` precompute or
        model, or an engine without log-probs) by a no-grad pass of the policy (or of its frozen copy,
        refreshed now) in the trainer's numerics: each rank its share, then gathered. It runs after the
        selection, so groups that ``drop_ties`` set aside cost no pass. ``rollouts`` is alike on every rank."""
        if all(r.ref_logps for r in rollouts):
            return
        if pl_module.hparams.reference == "engine":
            log.info("rollout: the generations carry no log-probs; pi_t log-probs from a pass of the policy")
        a, b = shard_bounds(len(rollouts), *rank_and_world())
        pl_module.refresh_reference()
        pl_module.compute_ref_logps(rollouts[a:b], pad_id)
        logps = all_gather_list([r.ref_logps for r in rollouts[a:b]])
        for r, lp in zip(rollouts, logps, strict=True):
            r.ref_logps = lp

    def generations(
        self, trainer, pl_module, iteration: int, prompts: list[dict], rnd: int = 0
    ) -> tuple[list[Generation], float | None, float]:
        """Every prompt's generations for round ``rnd`` of iteration ``iteration`` (on every rank), with the
        seconds of generation (None when reused) and of the sync: those saved by an earlier attempt at this
        iteration from the same policy step, else sampled now (each rank its share) and saved before anything
        scores them."""
        step = trainer.global_step
        logprobs = pl_module.hparams.reference == "engine"
        sampled_with = {
            "run": self.run_id,
            "policy": self.lineage,
            "model": pl_module.hparams.model_path,
            "sampling": asdict(self.sampling),
            "logprobs": logprobs,
        }
        every_seed = request_seeds(self.seed, iteration, len(prompts), start=rnd * len(prompts))
        texts, ids = [p["prompt"] for p in prompts], [list(p["prompt_ids"]) for p in prompts]
        saved = load_generations(self.save_dir, iteration, step, texts, ids, rnd, every_seed, sampled_with)
        if saved is not None:
            log.info(
                "rollout: iteration %d reuses the %d generations saved at step %d",
                iteration,
                len(saved),
                step,
            )
            return saved, None, 0.0
        a, b = shard_bounds(len(prompts), *rank_and_world())
        sync_s = self.wake_and_sync(trainer, pl_module)
        start = time.perf_counter()
        gens = self.generate_own(
            [p["prompt_ids"] for p in prompts[a:b]], self.sampling, every_seed[a:b], logprobs
        )
        gen_s = time.perf_counter() - start
        self.sleep()
        gens = all_gather_list(gens)
        if trainer.is_global_zero and self.save_dir is not None:
            rows = (
                {
                    "epoch": iteration,
                    "policy_step": step,
                    "prompt": t,
                    "prompt_ids": x,
                    "seed": s,
                    "sampled_with": sampled_with,
                }
                | asdict(g)
                for t, x, s, g in zip(texts, ids, every_seed, gens)
            )
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(self.save_dir / generated_name(iteration, rnd), rows)
        return gens, gen_s, sync_s

    def _save(self, rollouts: list[Rollout], iteration: int, step: int) -> None:
        if self.save_dir is None:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        rows = (
            {
                "epoch": iteration,
                "policy_step": step,
                "prompt": r.prompt,
                "answer": r.answer,
                "responses": r.responses,
                "scores": r.scores,
                "p_hat": r.p_hat,
                "preferences": r.preferences,
                "ref_logps": r.ref_logps,
                "finish_reasons": r.extra.get("finish"),
                **({"fields": r.fields} if r.fields else {}),
            }
            for r in rollouts
        )
        write_jsonl_atomic(self.save_dir / f"epoch_{iteration}.jsonl", rows)


def generated_name(iteration: int, rnd: int = 0) -> str:
    """``epoch_K.generated.jsonl``; a refill round's ``epoch_K.round_R.generated.jsonl``."""
    return (
        f"epoch_{iteration}.generated.jsonl" if rnd == 0 else f"epoch_{iteration}.round_{rnd}.generated.jsonl"
    )


def prompt_row(rollout: Rollout) -> tuple:
    """What makes two rollouts the same prompt of the split: its text, tokens and answer."""
    return rollout.prompt, tuple(rollout.prompt_ids), rollout.answer


def is_tied(rollout: Rollout) -> bool:
    """All K samples tie (every P_hat is 1/2): the oracle prefers none, so the group carries no preference."""
    return max(rollout.p_hat) - min(rollout.p_hat) < 1e-9


def load_generations(
    save_dir: Path | None,
    iteration: int,
    step: int,
    prompts: list[str],
    prompt_ids: list[list[int]],
    rnd: int,
    seeds: list[int],
    sampled_with: dict,
) -> list[Generation] | None:
    """The generations saved for round ``rnd`` of iteration ``iteration`` (:func:`generated_name`) if they were
    sampled by the policy of global step ``step`` for exactly these prompts (their texts and the token ids the
    engine was given: a resume with another ``data.system_prompt``, tokenizer or chat template gives other
    ids for the same text), with these request ``seeds`` and
    as ``sampled_with`` says (this run, the lineage of the policy's weights, its model path,
    ``rollout.sampling``, whether the engine's log-probs were kept), else None: a run started afresh in an
    old run's directory, resumed from an older checkpoint and trained again, or resumed with other sampling
    settings, samples anew. Every rank reads the same file."""
    path = None if save_dir is None else save_dir / generated_name(iteration, rnd)
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    want = [(step, p, x, s, sampled_with) for p, x, s in zip(prompts, prompt_ids, seeds, strict=True)]
    got = [
        (r["policy_step"], r["prompt"], r.get("prompt_ids"), r.get("seed"), r.get("sampled_with"))
        for r in rows
    ]
    if got != want:
        return None
    fields = {f.name for f in dataclass_fields(Generation)}
    return [Generation(**{k: v for k, v in r.items() if k in fields}) for r in rows]


def rollout_metrics(
    rollouts: list[Rollout],
    gen_s: float | None,
    sync_s: float,
    n_tokens: int,
    sampled_tokens: int,
) -> dict[str, float]:
    """The ``rollout/*`` metrics (README, "What a run writes") from one iteration's scored rollouts; without
    the generation's (``gen_s`` None) when it reused saved generations. ``n_tokens``: the rollouts' response
    tokens; ``sampled_tokens``: every token generated in ``gen_s``, refill rounds' set-aside groups included
    (``rollout/tokens_per_s`` is the engines' speed, not the kept share's). On several colocated ranks the
    tokens are every rank's and ``gen_s`` is this rank's (the engines sample side by side): the combined
    speed of all the engines."""
    scores = torch.tensor([r.scores for r in rollouts], dtype=torch.float64)
    wins = torch.tensor([r.p_hat for r in rollouts], dtype=torch.float64)
    metrics = {
        "rollout/reward_mean": float(scores.mean()),
        "rollout/win_rate_std": float(wins.std(dim=-1, unbiased=False).mean()),
        "rollout/response_len": n_tokens / max(1, scores.numel()),
    }
    if gen_s is not None:
        metrics |= {
            "rollout/tokens_per_s": sampled_tokens / max(gen_s, 1e-9),
            "rollout/gen_s": gen_s,
            "rollout/sync_s": sync_s,
        }
    return metrics
