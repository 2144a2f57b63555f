"""Test-only stand-ins, run inside ``train.py``: an engine with sleep mode that records every call the rollout
callback makes (vLLM's CPU build has no sleep mode), and a callback that records each training step. Both
append JSON lines to one file, so a test can replay the order of events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch

from sppo_pl.rollout.base import Generation, SamplingConfig


def append(record: str, event: dict) -> None:
    with Path(record).open("a") as f:
        f.write(json.dumps(event) + "\n")


def autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class RecordingEngine:
    """Answers every prompt with one fixed response; sleeps like vLLM at ``level`` (2: weights dropped)."""

    def __init__(self, tokenizer, record: str, level: int = 1):
        self.record, self.level = record, level
        self.response = tokenizer.encode("\\boxed{1}", add_special_tokens=False) + [tokenizer.eos_token_id]
        self.text = tokenizer.decode(self.response, skip_special_tokens=True)
        self.asleep: set[str] = set()
        self.weights_dropped = False

    @classmethod
    def from_module(cls, module, generates: bool = True, record: str = "", level: int = 1) -> RecordingEngine:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(module.hparams.model_path), record, level)

    def _log(self, what: str, **extra) -> None:
        append(
            self.record, {"event": what, "asleep": sorted(self.asleep), "autocast": autocast_on(), **extra}
        )

    def generate(self, prompt_ids, sampling: SamplingConfig, seeds=None, logprobs=False) -> list[Generation]:
        self._log("generate", n=len(prompt_ids))
        k = sampling.n
        return [Generation([list(self.response)] * k, [self.text] * k, ["stop"] * k) for _ in prompt_ids]

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        count = sum(1 for _ in named_tensors)
        self._log("sync", tensors=count)
        self.weights_dropped = False

    def sleep(self) -> None:
        if self.asleep:
            return
        self._log("sleep")
        self.asleep = {"weights", "kv_cache"}
        self.weights_dropped = self.level == 2

    def wake_up(self, tags: list[str] | None = None) -> None:
        wanted = sorted(self.asleep if tags is None else self.asleep & set(tags))
        if wanted:
            self.asleep -= set(wanted)
            self._log("wake", tags=wanted)


class StepRecorder(L.Callback):
    """Records each training step (and the global step it starts at) into the engine's record."""

    def __init__(self, record: str):
        self.record = record

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        append(self.record, {"event": "train", "step": trainer.global_step})
