"""The engine protocol every rollout backend implements (vLLM, HF generate, or a user's)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from sppo_pl.distributed import drain


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample (``rollout.sampling``). ``n`` responses per prompt; ``temperature = 0`` means greedy."""

    n: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256

    def __post_init__(self):
        check_sampling(self.n, self.temperature, self.top_p, self.max_tokens)


ROLLOUT_MODES = ("colocate", "rank0")  # rollout.mode: an engine on every rank, or on rank 0 only


@dataclass
class Generation:
    """One prompt's responses: token ids (eos kept if generated) and decoded text (special tokens skipped)."""

    token_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    logprobs: list[list[float]] | None = None  # per sampled token, when the engine was asked for them


@runtime_checkable
class RolloutEngine(Protocol):
    """What the rollout callback needs from a generation backend."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        seeds: list[int] | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """Sample ``sampling.n`` responses for each prompt (token ids, no padding). ``seeds``, one per
        prompt, make each prompt's samples independent of the engine's history, and with vLLM (a generator per
        request) of the batch too; the HF engine seeds each batch with its first prompt's seed, so its samples
        also depend on how the prompts were split into batches and ranks.
        ``logprobs``: also each sampled token's log-prob under the engine's weights, before temperature and
        top-p (``module.reference=engine`` takes log pi_t from them); an engine that cannot leaves them None."""
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load these (Hugging Face-named) parameters into the running engine, in place."""
        ...


class PeerEngine:
    """Stands in for the engine on ranks that do not generate (``rollout.mode=rank0``).

    It drains every weight stream, so the gathers of sharded parameters line up with the generating rank.
    """

    def generate(self, prompt_ids, sampling, seeds=None, logprobs=False) -> list[Generation]:
        raise RuntimeError("this rank has no rollout engine (rollout.mode=rank0): rank 0 generates")

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        drain(named_tensors)  # the gathers are collective: every rank walks the stream


def check_sampling(
    n, temperature, top_p, max_tokens, key: str = "rollout.sampling", n_key: str = "n"
) -> None:
    """Sampling settings a generation can use, else a ValueError naming ``{key}.<field>``: ``n`` a whole
    number in 1..:data:`SEED_STRIDE`, ``max_tokens`` a whole number >= 1, ``temperature`` a finite number >= 0
    (> 0 for n > 1: greedy samples are K copies of one response), ``top_p`` in (0, 1]."""
    if not is_whole(n) or not 1 <= n <= SEED_STRIDE:
        raise ValueError(
            f"{key}.{n_key} (samples per prompt) must be a whole number in 1..{SEED_STRIDE}, got {n!r}"
        )
    if not _real(temperature) or not 0 <= temperature < math.inf:
        raise ValueError(f"{key}.temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if temperature == 0 and n > 1:
        raise ValueError(
            f"{key}.temperature=0 is greedy: its {n} samples ({key}.{n_key}) would be copies of one response, and "
            "every P_hat 1/2; sample with a temperature > 0"
        )
    if not _real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"{key}.top_p must be in (0, 1], got {top_p!r}")
    if not is_whole(max_tokens) or max_tokens < 1:
        raise ValueError(f"{key}.max_tokens must be a whole number >= 1, got {max_tokens!r}")


def is_whole(x) -> bool:
    """An integer and not a bool (the config checks' "whole number")."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def positive_number(value, field: str, why: str = "") -> float:
    """``value`` as a float if it is a finite number > 0 (not a bool, not text), else an error naming
    ``field`` (``why``, if given, says what a bad value would do)."""
    if not _real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a finite number > 0{f' ({why})' if why else ''}, got {value!r}")
    return float(value)


def check_rollout_mode(mode) -> None:
    """``rollout.mode``: one of :data:`ROLLOUT_MODES`."""
    if mode not in ROLLOUT_MODES:
        raise ValueError(f"rollout.mode must be one of {ROLLOUT_MODES}, got {mode!r}")


def check_max_rounds(value) -> None:
    """``rollout.max_rounds``: a whole number >= 1 (rounds of sampling under dynamic sampling)."""
    if not is_whole(value) or value < 1:
        raise ValueError(f"rollout.max_rounds must be a whole number >= 1, got {value!r}")


def validation_sampling(sampling: SamplingConfig, val_max_tokens: int | None) -> SamplingConfig:
    """How validation samples: one greedy response per prompt, up to ``val_max_tokens`` tokens (None: the
    training sampling's ``max_tokens``)."""
    check_val_max_tokens(val_max_tokens)
    max_tokens = sampling.max_tokens if val_max_tokens is None else val_max_tokens
    return SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)


def check_val_max_tokens(value) -> None:
    """``rollout.val_max_tokens``: null (the sampling's ``max_tokens``) or a whole number >= 1."""
    if value is not None and (not is_whole(value) or value < 1):
        raise ValueError(
            "rollout.val_max_tokens must be a whole number >= 1 (or null: rollout.sampling.max_tokens), "
            f"got {value!r}"
        )


def check_drop_ties(value) -> None:
    """``rollout.drop_ties`` is true, false or auto (not 1, 0 or "yes": a bool or the one string)."""
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"rollout.drop_ties must be true, false or auto, got {value!r}")


def dynamic_sampling(drop_ties: bool | str, is_verifier: bool, k: int) -> bool:
    """Whether tied groups are set aside: ``drop_ties`` itself when true or false; with ``auto``, when the
    oracle is a verifier (0/1 scores: a group of K samples all right or all wrong ties, and with a weak model
    most do) and there are K >= 2 samples to compare. Continuous scores (reward and preference models)
    almost never tie, so auto leaves them alone."""
    if drop_ties == "auto":
        return bool(is_verifier) and k >= 2
    return bool(drop_ties)


# vLLM samples a request of seed s and n samples with seeds s, s + 1, ..., s + n - 1: prompts' seeds lie
# this far apart, so no two samples of an iteration share a random stream (n is at most this)
SEED_STRIDE = 1024


def request_seeds(seed: int, iteration: int, n: int, start: int = 0) -> list[int]:
    """One sampling seed per prompt of iteration ``iteration``: fixed by (seed, iteration, position), so a resumed
    run samples exactly what an uninterrupted one would, and with vLLM so does a run on another number of
    ranks (the HF engine seeds per batch: see :meth:`RolloutEngine.generate`). ``start``: the
    position of the first prompt (a refill round's prompts come after the earlier rounds'). Multiples of
    :data:`SEED_STRIDE` (mod 2^31), so the K samples of different prompts never share a seed."""
    base = (seed * 1_000_003 + iteration) * 1_000_003 + start
    return [((base + i) * SEED_STRIDE) % 2**31 for i in range(n)]
