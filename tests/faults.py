"""Faults injected into a real run by callbacks (``+callbacks.fault._target_=tests.faults.KillAt``)."""

from __future__ import annotations

import math
import os
import signal

import lightning as L


class KillAt(L.Callback):
    """Send this process ``sig`` (SIGKILL by default) as the batch of global step ``step`` starts."""

    def __init__(self, step: int, sig: str = "SIGKILL"):
        self.step, self.sig = step, getattr(signal, sig)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


class NaNAt(L.Callback):
    """Make the loss of global step ``step`` NaN (once), by poisoning one win-rate of its batch."""

    def __init__(self, step: int):
        self.step, self.fired = step, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.fired:
            batch["p_hat"][0, 0] = math.nan
            self.fired = True


class FailScoringAt(L.Callback):
    """Make the oracle raise while it scores the rollouts of self-play iteration ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_fit_start(self, trainer, pl_module):
        from callbacks.rollout import RolloutCallback

        (rollout,) = [c for c in trainer.callbacks if isinstance(c, RolloutCallback)]
        score = rollout.oracle.score_rollouts

        def failing(rollouts):
            if trainer.current_epoch == self.epoch:
                raise RuntimeError(f"oracle failed (injected) in iteration {self.epoch}")
            return score(rollouts)

        rollout.oracle.score_rollouts = failing


class SaveAndKillAt(L.Callback):
    """After the optimizer step that makes global step ``step``, save a mid-iteration checkpoint to ``path``
    (as SLURM's requeue does, from within the epoch) and SIGKILL this process."""

    def __init__(self, step: int, path: str):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            os.kill(os.getpid(), signal.SIGKILL)
