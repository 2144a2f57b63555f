"""A test-only callback: fails the run unless every epoch trains on rollouts from that epoch's policy; it also
records whether the previous iteration's checkpoint was on disk when each epoch started."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class RolloutAlignmentCheck(L.Callback):
    def __init__(self, record: str):
        self.record = Path(record)
        self.seen: list[dict] = []
        self.checkpoints: dict[int, bool] = {}  # epoch -> last.ckpt on disk when it started

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start_step = trainer.global_step
        # what an interruption now would leave: the last finished iteration's checkpoint
        last = Path(trainer.checkpoint_callback.dirpath, "last.ckpt") if trainer.checkpoint_callback else None
        self.checkpoints[trainer.current_epoch] = bool(last and last.exists())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        row = {
            "epoch": trainer.current_epoch,
            "rollout_iteration": batch["rollout_iteration"],
            "rollout_step": batch["rollout_step"],
            "epoch_start_step": self.epoch_start_step,
            "step": trainer.global_step,
            "batch_fingerprint": int(batch["input_ids"].sum()),
        }
        self.seen.append(row)
        if row["rollout_iteration"] != row["epoch"] or row["rollout_step"] != row["epoch_start_step"]:
            raise AssertionError(f"epoch {row['epoch']} trained on stale rollouts: {row}")

    def on_fit_end(self, trainer, pl_module):
        self.record.write_text(json.dumps(self.seen))
        self.record.with_suffix(".checkpoints.json").write_text(json.dumps(self.checkpoints))
