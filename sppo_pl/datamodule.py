"""SPPODataModule: prompts in, each self-play iteration's scored rollouts out as training batches.

The prompt source is any ``datasets.DatasetDict`` with ``train`` and ``test`` splits (a Hydra ``_target_``
that returns one, e.g. :func:`sppo_pl.data.arithmetic.arithmetic_splits`). The data module reads and checks
the prompts, picks each iteration's (:meth:`next_prompts`), and stores, shards and batches the rollouts the
rollout callback hands it (:meth:`set_rollouts`) at the iteration's start; they are saved in checkpoints. With
``reload_dataloaders_every_n_epochs=1`` Lightning rebuilds :meth:`train_dataloader` every iteration.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sppo_pl.data.common import check_answer, check_columns, check_prompt, locate
from sppo_pl.rollout.base import is_whole
from sppo_pl.types import Rollout

log = logging.getLogger(__name__)


class SPPODataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: Any,
        tokenizer: Any = None,
        prompt_key: str = "prompt",
        answer_key: str | None = "answer",
        system_prompt: str | None = None,
        prompts_per_iteration: int = 64,
        batch_size: int = 8,
        val_batch_size: int = 64,
        max_prompt_len: int = 256,
        max_val_prompts: int | None = None,
        seed: int = 0,
        fields: list[str] | None = None,
        drop_overlong: bool = False,
    ):
        super().__init__()
        if prompts_per_iteration < 1 or batch_size < 1 or val_batch_size < 1:
            raise ValueError(
                "data.prompts_per_iteration, data.batch_size and data.val_batch_size must be >= 1"
            )
        if max_val_prompts is not None and (not is_whole(max_val_prompts) or max_val_prompts < 1):
            raise ValueError(
                f"data.max_val_prompts must be null (all) or a whole number >= 1, got {max_val_prompts!r}"
            )
        self.fields, self.drop_overlong = list(fields or []), drop_overlong
        reserved = reserved_fields() & set(self.fields)
        if reserved:
            raise ValueError(
                f"data.fields may not name {sorted(reserved)}: the prompt and answer always go, and a field is "
                "handed to the oracle by name, beside the arguments it takes itself; rename the column"
            )
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.prompt_key, self.answer_key, self.system_prompt = prompt_key, answer_key, system_prompt
        self.prompts_per_iteration, self.batch_size, self.val_batch_size = (
            prompts_per_iteration,
            batch_size,
            val_batch_size,
        )
        self.max_prompt_len, self.max_val_prompts, self.seed = max_prompt_len, max_val_prompts, seed
        self.train_prompts: list[dict] = []
        self.val_prompts: list[dict] = []
        self.where: dict[str, list[tuple[str, int]]] = {}  # split -> each prompt's (file or split, row)
        self.answer_columns: dict[str, bool] = {}  # split -> whether it has the data.answer_key column
        self.rollouts: list[Rollout] = []
        self.rollout_iteration = -1
        self.rollout_step = -1

    # ---- prompts -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Read and check the prompts: both splits, or only the test split for ``stage="validate"`` (the
        evaluation entry point never reads the train split)."""
        if self.train_prompts or (stage == "validate" and self.val_prompts):
            return
        if self.tokenizer is None:
            raise ValueError("SPPODataModule needs a tokenizer (train.py passes the model's)")
        ds = self.dataset() if callable(self.dataset) else self.dataset
        for split in ("train", "test"):
            if split not in ds:
                raise ValueError(f"data.dataset must provide a '{split}' split, got {list(ds)}")
        if stage != "validate":
            self.train_prompts = self._encode(ds["train"], "train")
        rows = spread_rows(len(ds["test"]), self.max_val_prompts)
        self.val_prompts = self._encode(ds["test"].select(rows), "test", rows)
        if 0 < len(self.train_prompts) < self.prompts_per_iteration:
            log.warning(
                "data: the train split has %d prompts, fewer than data.prompts_per_iteration=%d: each iteration "
                "repeats prompts",
                len(self.train_prompts),
                self.prompts_per_iteration,
            )

    def _encode(self, split, name: str, rows: list[int] | None = None) -> list[dict]:
        """The split's rows checked and tokenized; ``self.where[name]`` records where each came from.
        ``rows``: each row's index in the whole split, when ``split`` is a selection of it."""
        check_columns(split, f"split '{name}'", [self.prompt_key, *self.fields])
        self.answer_columns[name] = bool(self.answer_key) and self.answer_key in split.column_names
        kept, self.where[name] = [], []
        for i, row in zip(rows or range(len(split)), split, strict=True):
            at = locate(row, name, i)  # the file and its row, for a local file's rows
            if (encoded := self._encode_row(row, *at)) is not None:
                kept.append(encoded)
                self.where[name].append(at)
        if len(kept) < len(split):
            log.warning(
                "data: dropped %d of %d '%s' prompts above model.max_prompt_len=%d",
                len(split) - len(kept),
                len(split),
                name,
                self.max_prompt_len,
            )
        if not kept:
            raise ValueError(
                f"data: split '{name}' has no prompts within model.max_prompt_len={self.max_prompt_len}"
            )
        return kept

    def _encode_row(self, row: dict, where: str, i: int) -> dict | None:
        """One checked, tokenized row (row ``i`` of ``where``); None if over-long and ``drop_overlong``."""
        prompt = check_prompt(row[self.prompt_key], where, i, self.prompt_key)
        ids = encode_prompt(self.tokenizer, prompt, self.system_prompt)
        if len(ids) > self.max_prompt_len:
            if self.drop_overlong:
                return None
            raise ValueError(
                f"data: {where} row {i}: prompt is {len(ids)} tokens, above "
                f"model.max_prompt_len={self.max_prompt_len} (data.drop_overlong=true drops such rows)"
            )
        answer = (
            check_answer(row.get(self.answer_key), where, i, self.answer_key) if self.answer_key else None
        )
        return {
            "prompt": prompt if isinstance(prompt, str) else prompt[-1]["content"],
            "prompt_ids": ids,
            "answer": answer,
            **self._fields(row, where, i),
        }

    def check_answers(self, reward: Any) -> None:
        """Every prompt of both splits has an answer, if ``reward`` (the run's reward config) needs them: if a
        class it names sets ``needs_answers`` (a verifier, alone or in a mix). ``build`` calls it after
        :meth:`setup`, so a missing answer stops the run before the model loads, not at the first scoring."""
        verifier = answers_needed_by(reward)
        if verifier is None:
            return
        if not self.answer_key:
            raise ValueError(
                f"data.answer_key is null (prompts without answers), but the reward {verifier} checks every "
                "response against its prompt's answer"
            )
        for name, column in self.answer_columns.items():
            if not column:
                raise ValueError(
                    f"data: split '{name}' has no column {self.answer_key!r} (data.answer_key), but the reward "
                    f"{verifier} checks every response against its prompt's answer"
                )
        for name, prompts in (("train", self.train_prompts), ("test", self.val_prompts)):
            for p, (where, i) in zip(prompts, self.where.get(name, []), strict=False):
                if not (p["answer"] or "").strip():
                    raise ValueError(
                        f"data: {where} row {i}: no answer, but the reward {verifier} needs one for every prompt"
                    )

    def _fields(self, row: dict, where: str, i: int) -> dict:
        """The ``data.fields`` of row ``i`` of ``where``: each must be JSON data, since the rollouts' files keep
        it (a parquet timestamp or bytes column would otherwise fail only when the first iteration is saved)."""
        fields = {k: row[k] for k in self.fields}
        for k, v in fields.items():
            try:
                json.dumps(v)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"data: {where} row {i}, field {k!r} (data.fields): a {type(v).__name__} cannot be kept in the "
                    f"rollouts' JSON lines ({e}); convert the column to text or numbers"
                ) from e
        return fields

    def next_prompts(self, iteration: int, round: int = 0, rounds: int = 1) -> list[dict]:
        """The ``prompts_per_iteration`` prompts of self-play iteration ``iteration``: blocks of a seeded pass over
        the train split, then of the next pass, each pass's last partial block dropped (verl's ``drop_last``), so
        no block holds a prompt twice. With refills (``rounds`` > 1, ``rollout.drop_ties``) each iteration owns
        ``rounds`` such blocks and round ``round`` reads its own; the blocks a round does not need are passed
        over, so a resumed run reads exactly what an uninterrupted one did, with no state to save. A split
        smaller than a block is repeated within it (:meth:`setup` warns)."""
        total, n = len(self.train_prompts), self.prompts_per_iteration
        block = iteration * rounds + round
        if total < n:  # seeded passes, wrapping around
            cycles = (divmod(i, total) for i in range(block * n, block * n + n))
            return [self.train_prompts[_permutation(self.seed, c, total)[pos]] for c, pos in cycles]
        cycle, first = divmod(block, total // n)
        order = _permutation(self.seed, cycle, total)
        return [self.train_prompts[i] for i in order[first * n : first * n + n]]

    # ---- rollouts ------------------------------------------------------------------------------------
    def set_rollouts(self, rollouts: list[Rollout], iteration: int, step: int) -> None:
        """Scored rollouts sampled by the policy at ``step`` (global step), to train on in ``iteration``."""
        samples_per_prompt(rollouts)
        check_targets(rollouts)
        self.rollouts, self.rollout_iteration, self.rollout_step = rollouts, iteration, step

    def state_dict(self) -> dict:
        """Saved in Lightning checkpoints: a resumed run trains on the very rollouts it had, not new ones."""
        return {
            "rollouts": [asdict(r) for r in self.rollouts],
            "rollout_iteration": self.rollout_iteration,
            "rollout_step": self.rollout_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.rollouts = [Rollout(**r) for r in state.get("rollouts", [])]
        self.rollout_iteration = state.get("rollout_iteration", -1)
        self.rollout_step = state.get("rollout_step", -1)

    def train_dataloader(self) -> DataLoader:
        """Batches of the iteration's rollouts. Lightning builds this loader before ``on_train_epoch_start``, where
        the rollout callback makes them: its dataset has the iteration's length (``prompts_per_iteration`` prompt
        groups) from the start and reads the rollouts only when a batch is drawn."""
        iteration = (
            _iteration_to_train(self.trainer) if self.trainer is not None else max(self.rollout_iteration, 0)
        )
        pad = self.tokenizer.pad_token_id
        seed = self.seed + iteration
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = IterationRollouts(self, iteration)
        # A fixed order per iteration, however often the loader is iterated (Lightning iterates it more
        # than once on a resume, which advanced a shuffling generator and changed the batches), started at
        # the first batch not yet trained when a run resumes inside the iteration
        sampler = (
            ResumableDistributedSampler(
                dataset, world, self.trainer.global_rank, seed, self.batch_size, self._batches_done
            )
            if world > 1  # batch_size is per rank; each rank trains on its shard of the prompt groups
            else ResumableOrder(
                torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist(),
                self.batch_size,
                self._batches_done,
            )
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=lambda rows: {
                **collate_rollouts(rows, pad),
                "rollout_iteration": self.rollout_iteration,
                "rollout_step": self.rollout_step,
            },
        )

    def _batches_done(self) -> int:
        """The batches of the current iteration already trained: 0, except in a run resumed from a checkpoint
        written inside an iteration (SLURM's requeue), read when the loader is iterated (Lightning has
        restored its progress by then)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def val_dataloader(self) -> DataLoader:
        """The test prompts in order, each with its ``val_weight``. On several ranks each rank takes every
        world-th prompt; the last ones are padded with repeats (so every rank runs as many batches: generation
        may be collective) that carry weight 0, so ``val/*`` counts each prompt once."""
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = ValidationPrompts(self.val_prompts, world)
        sampler = (
            DistributedSampler(dataset, world, self.trainer.global_rank, shuffle=False) if world > 1 else None
        )
        return DataLoader(dataset, batch_size=self.val_batch_size, sampler=sampler, collate_fn=_as_columns)


def untrained_order(order: list[int], done_batches: int, batch_size: int) -> list[int]:
    """An iteration's sample order from batch ``done_batches`` on: the samples not yet trained.

    Resuming inside an iteration, Lightning draws the iteration's remaining batches from the start of a
    loader that keeps no state; this order holds exactly those, cut at the same boundaries as an
    uninterrupted run's, the last one short as there, e.g. ``untrained_order([3, 0, 2, 1, 5], 1, 2) ==
    [2, 1, 5]`` (batches [2, 1], [5]). (Moving the trained samples to the end instead would refill a short
    last batch with some of them: trained twice.)
    """
    return order[done_batches * batch_size :]


class ResumableOrder(torch.utils.data.Sampler[int]):
    """A fixed sample ``order`` (one rank), iterated from the first batch not yet trained (``done()`` batches
    of ``batch_size`` trained: :func:`untrained_order`)."""

    def __init__(self, order: list[int], batch_size: int, done: Callable[[], int]):
        self.order, self.batch_size, self.done = order, batch_size, done

    def __iter__(self) -> Iterator[int]:
        return iter(untrained_order(self.order, self.done(), self.batch_size))

    def __len__(self) -> int:
        return len(self.order)


class ResumableDistributedSampler(DistributedSampler):
    """This rank's share of a seeded shuffle (a DistributedSampler, so Lightning keeps it), iterated from the
    first batch not yet trained, as :class:`ResumableOrder`."""

    def __init__(self, dataset, world: int, rank: int, seed: int, batch_size: int, done: Callable[[], int]):
        super().__init__(dataset, world, rank, seed=seed)
        self.batch_size, self.done = batch_size, done

    def __iter__(self) -> Iterator[int]:
        return iter(untrained_order(list(super().__iter__()), self.done(), self.batch_size))


class ValidationPrompts(torch.utils.data.Dataset):
    """``prompts`` padded with repeats to a multiple of ``world``; ``val_weight`` 1 for each prompt's first
    appearance, 0 for a repeat."""

    def __init__(self, prompts: list[dict], world: int = 1):
        self.prompts, self.length = prompts, math.ceil(len(prompts) / world) * world

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {**self.prompts[i % len(self.prompts)], "val_weight": float(i < len(self.prompts))}


def reserved_fields() -> set[str]:
    """The names a ``data.fields`` column may not take: a batch's own columns (``prompt``, ``prompt_ids``,
    ``answer``, validation's ``val_weight``) and the arguments of the oracle's methods, which take the fields
    as keywords (a ``responses`` column would be given twice)."""
    import inspect

    from sppo_pl.rewards.oracle import Oracle

    names = {"prompt", "prompt_ids", "answer", "val_weight"}
    for method in (Oracle.score, Oracle.checked_score, Oracle.compare):
        params = inspect.signature(method).parameters.items()
        names |= {n for n, p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def answers_needed_by(reward: Any) -> str | None:
    """The ``_target_`` in a reward config (or in a node inside it: the oracles of a mix) whose class sets
    ``needs_answers``, read without instantiating it; None if no class does."""
    return reward_target(reward, lambda cls: getattr(cls, "needs_answers", False))


def reward_target(reward: Any, wanted: Callable[[type], bool]) -> str | None:
    """The first ``_target_`` in a reward config (or in a node inside it) whose class is ``wanted``, read
    without instantiating it; None if none is. A ``_target_`` that does not import is left to
    ``instantiate`` to report."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(reward) if OmegaConf.is_config(reward) else reward
    for target in _targets(node):
        try:
            cls = get_class(target)
        except Exception:
            continue
        if wanted(cls):
            return target
    return None


def _targets(node: Any) -> Iterator[str]:
    """Every ``_target_`` in a config (as plain containers), outermost first."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        node = list(node.values())
    for v in node if isinstance(node, list) else ():
        yield from _targets(v)


class IterationRollouts(torch.utils.data.Dataset):
    """The rollouts of iteration ``iteration`` as the data module holds them when a batch is drawn; its length,
    ``prompts_per_iteration``, is known before they are made."""

    def __init__(self, dm: SPPODataModule, iteration: int):
        self.dm, self.iteration = dm, iteration

    def __len__(self) -> int:
        return self.dm.prompts_per_iteration

    def __getitem__(self, i: int) -> Rollout:
        if self.dm.rollout_iteration != self.iteration or len(self.dm.rollouts) != len(self):
            raise RuntimeError(
                f"no rollouts for iteration {self.iteration} (the data module holds {len(self.dm.rollouts)} of "
                f"iteration {self.dm.rollout_iteration}): the rollout callback (rollout=...) makes them at the "
                "start of each iteration"
            )
        return self.dm.rollouts[i]


def _iteration_to_train(trainer) -> int:
    """The iteration the next training pass belongs to. On a resume, Lightning first builds the dataloader
    before its loop has counted the checkpoint's finished iteration as completed (it has counted it as processed)."""
    return max(trainer.current_epoch, trainer.fit_loop.epoch_progress.current.processed)


def encode_prompt(tokenizer, prompt: str | list[dict], system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt through the tokenizer's chat template, ready for the assistant's turn.

    ``prompt`` is a user turn's text or a list of chat messages (``{"role", "content"}``, ending with a user
    turn); ``system_prompt`` goes first unless the messages hold a system turn. Without a chat template,
    the messages' contents joined by blank lines are tokenized as plain text.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]


def spread_rows(n: int, limit: int | None) -> list[int]:
    """``limit`` row indices of an ``n``-row split spread evenly over it (all ``n`` when ``limit`` is None or
    not below ``n``): row ``(i * n) // limit`` for ``i < limit``, so a split sorted by subject or difficulty
    is sampled across its whole length, the same rows in every run and for every seed.

    >>> spread_rows(10, 4)
    [0, 2, 5, 7]
    """
    if limit is None or limit >= n:
        return list(range(n))
    return [(i * n) // limit for i in range(limit)]


@lru_cache(maxsize=4)
def _permutation(seed: int, cycle: int, n: int) -> list[int]:
    perm = list(range(n))
    random.Random(seed * 1_000_003 + cycle).shuffle(perm)
    return perm


def _as_columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def samples_per_prompt(rollouts: list[Rollout]) -> int:
    """K, the number of samples each rollout has; a ValueError when the prompts' K differ (or none is given)."""
    ks = {r.k for r in rollouts}
    if len(ks) != 1:
        raise ValueError(f"every prompt needs the same number of samples, got {sorted(ks)}")
    return ks.pop()


# what the loss reads of each rollout, one value per sample, and what fills it
TARGETS = {
    "scores": "the reward callback's score_rollouts",
    "p_hat": "the reward callback's score_rollouts",
    "ref_logps": "the rollout callback's pi_t pass",
}


def check_targets(rollouts: list[Rollout]) -> None:
    """Every rollout has K values of each field the loss reads (:data:`TARGETS`), else a ValueError naming the
    prompt and the field. :func:`collate_rollouts` fills a missing field with zeros (a log-prob pass needs none),
    which in training would be a silent target of P_hat = 0."""
    for n, r in enumerate(rollouts):
        for name, filler in TARGETS.items():
            got = len(getattr(r, name))
            if got != r.k:
                raise ValueError(
                    f"rollouts: prompt {n} ({r.prompt[:60]!r}) has {got} {name} values for its {r.k} samples; "
                    f"{filler} must give one per sample"
                )


def collate_rollouts(rows: list[Rollout], pad_id: int) -> dict[str, torch.Tensor]:
    """B prompt groups of K responses -> tensors laid out ``[left-padded prompt | right-padded response]``.

    input_ids, attention_mask: [B*K, P + R]; response_mask: [B*K, R];
    ref_logps, p_hat, scores: [B, K] (row b*K + k of the flat tensors is sample k of prompt b);
    preferences: [B, K, K], P(y_i > y_j | x_b), when every rollout has its oracle's matrix.
    """
    seqs = [(r.prompt_ids, resp) for r in rows for resp in r.response_ids]
    p = max(len(x) for x, _ in seqs)
    rlen = max(1, max(len(y) for _, y in seqs))
    ids, attn, resp_mask = [], [], []
    for x, y in seqs:
        lp, ry = p - len(x), rlen - len(y)
        ids.append([pad_id] * lp + list(x) + list(y) + [pad_id] * ry)
        attn.append([0] * lp + [1] * (len(x) + len(y)) + [0] * ry)
        resp_mask.append([1] * len(y) + [0] * ry)

    def grid(field: str) -> torch.Tensor:
        return torch.tensor([getattr(r, field) or [0.0] * r.k for r in rows], dtype=torch.float32)

    batch = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(attn),
        "response_mask": torch.tensor(resp_mask),
        "ref_logps": grid("ref_logps"),
        "p_hat": grid("p_hat"),
        "scores": grid("scores"),
    }
    if all(r.preferences for r in rows):
        batch["preferences"] = torch.tensor([r.preferences for r in rows], dtype=torch.float32)
    return batch
