"""Stop (or skip) on a non-finite loss or gradient, before the optimizer step can poison the policy.

Without it, a diverging run (``optim.optimizer.lr=1e6``) trains on NaN from the next step, writes a NaN
checkpoint over the last good one, exports a NaN policy and exits 0. With ``on_nonfinite=stop`` (default)
the first non-finite loss or gradient stops the run before its optimizer step, with an error that names the
step and the self-play iteration (under fp16's GradScaler, overflowing gradients are left to it: it skips
such a step and lowers its scale); the checkpoint of the last finished iteration stays as it was, nothing
is exported, and the run exits non-zero. ``on_nonfinite=skip`` drops that step's gradients instead (the
optimizer skips parameters without a gradient), logs ``train/skipped_steps`` and goes on. Every rank takes
the same decision. The policy's weights are also checked at each iteration's end, before its checkpoint.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from sppo_pl.checkpoint import last_checkpoint
from sppo_pl.distributed import all_finite

log = logging.getLogger(__name__)


class FiniteCheck(L.Callback):
    def __init__(self, on_nonfinite: str = "stop"):
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(
                f"callbacks.finite_check.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}"
            )
        self.on_nonfinite = on_nonfinite
        self.skipped = 0
        # the loss shown: the step's first non-finite micro-batch loss, else its last
        self._loss: torch.Tensor | None = None
        self._loss_ok = True  # every micro-batch loss of the coming optimizer step was finite

    def state_dict(self) -> dict:
        """Saved in checkpoints, so a resumed run's ``train/skipped_steps`` goes on counting."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)

    def on_before_backward(self, trainer, pl_module, loss):
        """Each micro-batch's loss (``trainer.accumulate_grad_batches``): the first non-finite one is kept."""
        if self._loss_ok:
            self._loss = loss.detach()
            self._loss_ok = all_finite([self._loss])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        loss_ok, self._loss_ok = self._loss_ok, True
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # fp16's GradScaler skips a step whose unscaled gradients overflowed, and lowers its scale: routine
        grads_ok = _scaler(trainer) is not None or all_finite(grads)
        if trainer.strategy.reduce_boolean_decision(loss_ok and grads_ok, all=True):
            return
        what = "loss" if not loss_ok else "gradient"
        where = f"step {trainer.global_step} of self-play iteration {trainer.current_epoch}"
        if self.on_nonfinite == "skip":
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.skipped += 1
            log.warning("non-finite %s at %s: step skipped (%d so far)", what, where, self.skipped)
            pl_module.log("train/skipped_steps", float(self.skipped), rank_zero_only=True)
            return
        raise FloatingPointError(
            f"non-finite {what} at {where} (loss {self._value()}): stopped before the optimizer step. "
            f"{_kept(trainer)} Nothing was exported. Lower optim.optimizer.lr, or skip such steps with "
            "callbacks.finite_check.on_nonfinite=skip"
        )

    def on_train_epoch_end(self, trainer, pl_module):
        """Before the iteration's checkpoint (Lightning runs checkpoint callbacks last): the weights are finite."""
        ok = all_finite([p.detach() for p in pl_module.parameters()])
        if not trainer.strategy.reduce_boolean_decision(ok, all=True):
            raise FloatingPointError(
                f"the policy's weights are not finite at the end of self-play iteration {trainer.current_epoch} "
                f"(step {trainer.global_step}): its checkpoint is not written. {_kept(trainer)} Nothing was "
                "exported. Lower optim.optimizer.lr"
            )

    def _value(self) -> str:
        return "unknown" if self._loss is None else f"{float(self._loss.float().mean()):g}"


def _scaler(trainer):
    """The precision plugin's GradScaler (``trainer.precision=16-mixed``), or None."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def _kept(trainer) -> str:
    ckpt = last_checkpoint(trainer)
    if ckpt:
        return f"The last finished iteration's checkpoint, {ckpt}, is kept."
    return "No iteration had finished, so there is no checkpoint."
