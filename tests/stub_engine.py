"""Test-only stand-ins, run inside ``train.py``: ``VLLMEngine`` over a stand-in for ``vllm.LLM`` that records
every call (vLLM's CPU build has no sleep mode), and a callback that records each training step. Both
append JSON lines to one file, so a test can replay the order of events."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from sppo_pl.rollout.base import Generation, SamplingConfig
from sppo_pl.rollout.vllm_engine import VLLMEngine


def append(record: str, event: dict) -> None:
    with Path(record).open("a") as f:
        f.write(json.dumps(event) + "\n")


def autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class _RecordingLLM:
    """Stands in for ``vllm.LLM``: records the calls ``VLLMEngine`` makes of it."""

    def __init__(self, engine: RecordingEngine):
        self.engine = engine

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        self.engine.log("sync", tensors=sum(1 for _ in kwargs["weights_iterator"]))

    def reset_prefix_cache(self) -> None:
        pass

    def sleep(self, level: int) -> None:
        self.engine.log("sleep", level=level)

    def wake_up(self, tags: list[str]) -> None:
        self.engine.log("wake", tags=tags)


class RecordingEngine(VLLMEngine):
    """``VLLMEngine``'s own sleep/wake/sync bookkeeping over a recording stand-in for ``vllm.LLM``; answers
    every prompt with one fixed response."""

    def __init__(self, model_path: str, record: str, level: int = 1):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.record, self.sleep_level = record, level
        self.asleep, self.weights_dropped = set(), False
        self.llm = _RecordingLLM(self)
        self.response = tokenizer.encode("\\boxed{1}", add_special_tokens=False) + [tokenizer.eos_token_id]
        self.text = tokenizer.decode(self.response, skip_special_tokens=True)

    def log(self, what: str, **extra) -> None:
        append(
            self.record, {"event": what, "asleep": sorted(self.asleep), "autocast": autocast_on(), **extra}
        )

    def generate(self, prompt_ids, sampling: SamplingConfig, seeds=None, logprobs=False) -> list[Generation]:
        self.log("generate", n=len(prompt_ids))
        k = sampling.n
        return [Generation([list(self.response)] * k, [self.text] * k, ["stop"] * k) for _ in prompt_ids]


class StepRecorder(L.Callback):
    """Records each training step (and the global step it starts at) into the engine's record."""

    def __init__(self, record: str):
        self.record = record

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        append(self.record, {"event": "train", "step": trainer.global_step})
