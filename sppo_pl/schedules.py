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

        i = step mod N,  W = ceil(warmup_ratio N):  i / W  for i < W,  else  (N - i) / (N - W)
    """
    n = steps_per_iteration
    i, warmup = step % n, math.ceil(warmup_ratio * n)
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
    prompts: int, batch_size: int, accumulate: int = 1, devices: int | list | str = 1, num_nodes: int = 1
) -> int:
    """Optimizer steps in one self-play iteration: each of the ranks trains on ceil(prompts / ranks) prompt
    groups in batches of ``batch_size`` and steps once per ``accumulate`` batches (the last one short)."""
    listed = isinstance(devices, Sequence) and not isinstance(devices, str)  # OmegaConf's ListConfig too
    if isinstance(devices, bool) or not (listed or isinstance(devices, int)):
        raise ValueError(
            f"trainer.devices={devices!r} is not a count: set trainer.devices to a number, or "
            "optim.scheduler.steps_per_iteration by hand"
        )
    ranks = (len(devices) if listed else devices) * num_nodes
    batches = math.ceil(math.ceil(prompts / ranks) / batch_size)
    return math.ceil(batches / accumulate)
