"""Fallback engine: Hugging Face ``generate`` on the policy itself (``rollout=hf``).

It samples from the very module being trained, so ``sync_weights`` has nothing to copy. Slower than vLLM
(no paged attention, padded batches) but needs nothing beyond transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sppo_pl.distributed import drain
from sppo_pl.logprobs import token_logps
from sppo_pl.rollout.base import Generation, SamplingConfig


class HFEngine:
    """Generates with ``model.generate`` in left-padded batches of ``batch_size`` prompts."""

    def __init__(
        self, model: Callable[[], torch.nn.Module] | torch.nn.Module, tokenizer, batch_size: int = 16
    ):
        """``model``: the module to generate with, or a function that returns it (the rollout callback
        passes the policy being trained); ``tokenizer``: a tokenizer or the directory to load it from."""
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if tokenizer.pad_token_id is None:  # Mistral's, Llama's: left padding (masked out) needs some id
            tokenizer.pad_token = tokenizer.eos_token
        self._model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def peer(cls, **settings) -> HFEngine:
        raise ValueError(
            "rollout=hf generates with the (sharded) policy on every rank: use rollout.mode=colocate"
        )

    @property
    def model(self) -> torch.nn.Module:
        return (
            self._model()
            if callable(self._model) and not isinstance(self._model, torch.nn.Module)
            else self._model
        )

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to do: generation reads the policy's own parameters."""
        drain(named_tensors)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        seeds: list[int] | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """Batches of ``batch_size`` prompts; each batch sampled under its first prompt's seed. ``logprobs``:
        each sampled token's log-prob from the model's raw logits (before temperature and top-p)."""
        model = self.model
        was_training = model.training
        model.eval()
        out: list[Generation] = []
        devices = rng_devices(next(model.parameters()).device)
        try:
            for s in tqdm(range(0, len(prompt_ids), self.batch_size), desc="hf generate", leave=False):
                # seeded: each batch from its own seed, the caller's random streams put back after it;
                # unseeded: from the global streams, advancing them as any sampling does
                with torch.random.fork_rng(devices=devices, enabled=seeds is not None):
                    if seeds is not None:
                        torch.manual_seed(seeds[s])
                    batch = prompt_ids[s : s + self.batch_size]
                    out.extend(self._generate_batch(model, batch, sampling, logprobs))
        finally:
            model.train(was_training)
        return out

    def _generate_batch(
        self, model, batch: list[list[int]], sampling: SamplingConfig, logprobs: bool = False
    ) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        eos = _eos_ids(model, self.tokenizer)
        width = max(len(p) for p in batch)
        device = next(model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        greedy = sampling.temperature == 0
        with _plain_generation_config(model, eos, pad):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None if greedy else 0,
                max_new_tokens=sampling.max_tokens,
                num_return_sequences=sampling.n,
                eos_token_id=eos,
                pad_token_id=pad,
                # sharded policy: every rank runs forward passes until all ranks are done
                synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,
                return_dict_in_generate=True,
                output_logits=logprobs,
            )
        new = out.sequences[:, width:]
        token_lps = token_logps(torch.stack(out.logits, dim=1), new).tolist() if logprobs else None
        new = new.tolist()
        gens = []
        for i in range(len(batch)):
            span = range(i * sampling.n, (i + 1) * sampling.n)
            rows = [_trim(new[j], eos, pad) for j in span]
            gens.append(
                Generation(
                    token_ids=[r for r, _ in rows],
                    texts=self.tokenizer.batch_decode([r for r, _ in rows], skip_special_tokens=True),
                    finish_reasons=[f for _, f in rows],
                    logprobs=[token_lps[j][: len(r)] for j, (r, _) in zip(span, rows)] if logprobs else None,
                )
            )
        return gens


@contextmanager
def _plain_generation_config(model, eos: list[int], pad: int):
    """The model's ``generation_config`` replaced, while it generates, by one holding only its special tokens:
    ``generate`` fills every setting not passed from it, so a checkpoint's ``repetition_penalty`` (1.05 in
    Qwen2.5-7B-Instruct's), ``no_repeat_ngram_size`` or ``min_new_tokens`` would shape the samples, unlike
    vLLM's and unlike the raw log-probs the trainer scores them with."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=getattr(saved, "bos_token_id", None), eos_token_id=eos, pad_token_id=pad
    )
    try:
        yield
    finally:
        model.generation_config = saved


def _eos_ids(model, tokenizer) -> list[int]:
    """The ids generation stops at, as vLLM's: the tokenizer's eos and every eos id of the model's
    generation config (sorted)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _trim(row: list[int], eos: list[int], pad: int) -> tuple[list[int], str]:
    """Cut a generated row after its first eos (kept, as vLLM keeps it); 'stop' or 'length'."""
    for i, t in enumerate(row):
        if t in eos:
            return row[: i + 1], "stop"
    return row, "length"


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generator a seeded batch must put back: the model's. ``torch.manual_seed`` reseeds
    the CPU's and every CUDA generator, and ``fork_rng(devices=[])`` restores only the CPU's, so on a GPU the
    training steps after a rollout would draw (dropout) from the last rollout seed's stream."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
