"""Learning-rate schedules over self-play iterations (optimizer steps counted across the whole run)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LambdaLR


def iteration_linear_factor(step: int, steps_per_iteration: int, warmup_ratio: float) -> float:
    """The LR multiplier at optimizer ``step`` when every iteration restarts a linear schedule, as the original
    uclaml/SPPO trained (each iteration a fresh run of HF's linear schedule with ``warmup_ratio``):

        i = step mod N,  W = min(ceil(warmup_ratio N), N - 1):  i / W  for i < W,  else  (N - i) / (N - W)

    W is at most N - 1: an iteration of one optimizer step takes no warmup, since HF's W = 1 would give
    its only step, and so every step of the run, a learning rate of 0.
    """
    n = steps_per_iteration
    i, warmup = step % n, min(math.ceil(warmup_ratio * n), n - 1)
    if i < warmup:
        return i / warmup
    return max(0.0, (n - i) / max(1, n - warmup))


def iteration_linear_schedule(
    optimizer: Optimizer, steps_per_iteration: int, warmup_ratio: float = 0.1
) -> LambdaLR:
    """:func:`iteration_linear_factor` as a scheduler (stepped once per optimizer step)."""
    from torch.optim.lr_scheduler import LambdaLR

    if steps_per_iteration < 1:
        raise ValueError(f"optim.scheduler.steps_per_iteration must be >= 1, got {steps_per_iteration}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"optim.scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return LambdaLR(optimizer, lambda step: iteration_linear_factor(step, steps_per_iteration, warmup_ratio))


def steps_per_iteration(
    prompts: int,
    batch_size: int,
    accumulate: int = 1,
    devices: int | list | str = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
) -> int:
    """Optimizer steps in one self-play iteration: each of the ranks trains on ceil(prompts / ranks) prompt
    groups in batches of ``batch_size`` and steps once per ``accumulate`` batches (the last one short). The
    ranks are counted as the config checks count them (:func:`sppo_pl.strategy.device_count`: ``auto`` and -1
    are every GPU, or 1 process on CPU)."""
    from sppo_pl.strategy import device_count

    if isinstance(devices, bool):
        raise ValueError(f"trainer.devices={devices!r} is not a count: set trainer.devices to a number")
    ranks = device_count(devices, accelerator) * num_nodes
    batches = math.ceil(math.ceil(prompts / ranks) / batch_size)
    return math.ceil(batches / accumulate)


def apply_optimizer_settings(optimizer: Optimizer, schedulers: Sequence, configured: dict) -> list[str]:
    """Put the configured optimizer settings (``configured``: a fresh optimizer's ``defaults``, e.g. lr,
    weight_decay, betas) into an optimizer whose state a checkpoint restored, and say what changed.

    Lightning restores every param group's settings with the optimizer state, so a run resumed with a lower
    ``optim.optimizer.lr`` (what a NaN stop advises) would silently keep the old one. The configured lr
    replaces the group's base lr (``initial_lr``, the scheduler's ``base_lrs``); the current lr keeps its place
    in the schedule: lr <- lr * new_base / old_base. Returns "key: old -> new" for each setting changed.
    """
    changed: list[str] = []
    for i, group in enumerate(optimizer.param_groups):
        for key, want in configured.items():
            if key == "params" or key not in group:
                continue
            have = group.get("initial_lr", group["lr"]) if key == "lr" else group[key]
            if _same(have, want):
                continue
            changed.append(f"{key}: {have} -> {want}")
            if key != "lr":
                group[key] = want
                continue
            scheduled = "initial_lr" in group  # a scheduler's: lr = initial_lr x its factor
            group["lr"] = group["lr"] * want / have if scheduled and have else want
            if scheduled:
                group["initial_lr"] = want
            for s in schedulers:
                if hasattr(s, "base_lrs"):
                    s.base_lrs[i] = want
                    s._last_lr = [g["lr"] for g in optimizer.param_groups]
    return list(dict.fromkeys(changed))


def _same(a, b) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
