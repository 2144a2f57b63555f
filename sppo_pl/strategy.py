"""Lightning strategies for ``trainer/strategy=``: ``trainer.devices=N`` is the only change from 1 to N devices.

``fsdp`` (the default on several devices) is FSDP2 through Lightning's ``ModelParallelStrategy``: the
module's ``configure_model`` shards each decoder block and the root with ``fully_shard``
(:func:`sppo_pl.distributed.shard_fsdp2`); it runs on GPUs and, with gloo, on CPU processes.
``fsdp1`` is Lightning's ``FSDPStrategy`` auto-wrapping the decoder blocks (GPUs only: Lightning refuses it
on CPU). ``ddp`` replicates the model. On one device every choice falls back to Lightning's "auto".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def is_device_list(devices) -> bool:
    """Whether ``trainer.devices`` names device ids: a list (a Python one, or OmegaConf's from
    ``trainer.devices=[0,1]``) or a comma-separated string ("0,1")."""
    return (isinstance(devices, Sequence) and not isinstance(devices, str)) or (
        isinstance(devices, str) and "," in devices
    )


def device_count(devices: int | str | list | None, accelerator: str = "auto") -> int:
    """How many devices ``trainer.devices`` asks for ("auto" and -1: every GPU, or 1 process on CPU); a list
    (:func:`is_device_list`) names the devices."""
    if is_device_list(devices):
        if isinstance(devices, str):
            return len([d for d in devices.split(",") if d.strip()])
        return len(devices)
    if devices in (None, "auto", -1, "-1"):
        use_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if use_gpu else 1
    return int(devices)


STRATEGIES = ("auto", "fsdp", "fsdp1", "ddp")


def check_strategy_name(name) -> None:
    """``trainer.strategy.name``: one of :data:`STRATEGIES`."""
    if name not in STRATEGIES:
        raise ValueError(f"trainer.strategy.name must be auto, fsdp, fsdp1 or ddp, got {name!r}")


def select_strategy(
    name: str,
    devices: int | str | list | None = 1,
    accelerator: str = "auto",
    num_nodes: int = 1,
    timeout_minutes: float | None = None,
    **kwargs: Any,
) -> Any:
    """The strategy ``name`` ("auto", "fsdp", "fsdp1" or "ddp") for ``devices``; "auto" on one device.

    "auto" on several devices means "fsdp". ``timeout_minutes``: how long a rank waits in a collective
    before the run fails (None: Lightning's 30 minutes); under ``rollout.mode=rank0`` the other ranks wait
    that long for rank 0's generation and scoring. ``kwargs`` go to the Lightning strategy's constructor.
    """
    check_strategy_name(name)
    n = device_count(devices, accelerator) * num_nodes
    if n <= 1:
        return "auto"
    if timeout_minutes is not None:
        from datetime import timedelta

        from sppo_pl.rollout.base import positive_number

        minutes = positive_number(timeout_minutes, "trainer.strategy.timeout_minutes")
        kwargs["timeout"] = timedelta(minutes=minutes)
    if name in ("auto", "fsdp"):
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=n, tensor_parallel_size=1, **kwargs)
    if name == "fsdp1":
        from lightning.pytorch.strategies import FSDPStrategy

        kwargs.setdefault("use_orig_params", True)
        return FSDPStrategy(auto_wrap_policy=DecoderBlockPolicy(), **kwargs)
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(**kwargs)


class DecoderBlockPolicy:
    """FSDP1 auto-wrap policy: wrap each decoder block, the block classes read from the first module that
    names them (Hugging Face's ``_no_split_modules``), so the config never spells a class."""

    def __init__(self):
        self.names: set[str] | None = None

    def __call__(self, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if self.names is None and getattr(module, "_no_split_modules", None):
            self.names = set(module._no_split_modules)
        if recurse:
            return True
        return self.names is not None and type(module).__name__ in self.names
