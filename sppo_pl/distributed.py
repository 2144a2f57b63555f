"""Sharding and the few collectives sppo-pl needs, all of which are no-ops in a single process.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is applied per decoder block, the block classes taken from
the model itself (Hugging Face's ``_no_split_modules``), then to the root, which holds the embeddings, the
final norm and the head. Weight sync gathers one parameter at a time on every rank (``DTensor.full_tensor``
is a collective) and hands it on, so no rank ever holds a full state dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

# wrapper prefixes that FSDP1, activation checkpointing and torch.compile put into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ in size by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_list(items: list) -> list:
    """Concatenate every rank's list in rank order (the same full list on every rank)."""
    rank, world = rank_and_world()
    if world == 1:
        return list(items)
    parts: list = [None] * world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (a sharded DTensor: this rank's shard only)."""
    flags = [torch.isfinite(t.to_local() if hasattr(t, "to_local") else t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True  # one host sync


def broadcast_from_zero(obj):
    """Rank 0's ``obj`` on every rank."""
    rank, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- FSDP2 ---------------------------------------------------------------------------------------------
def decoder_block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The model's repeated block classes, by the names in Hugging Face's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(
            f"{type(model).__name__} names no decoder block class (_no_split_modules={sorted(names)}); "
            "FSDP needs one to shard per block"
        )
    return found


def mixed_precision_policy(precision: str | int | None):
    """FSDP2 mixed precision for a Lightning ``trainer.precision``: bf16/fp16 compute with fp32 gradient
    reduction for ``*-mixed``; None (parameters used as stored) otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    return None if dtype is None else MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_fsdp2(
    model: nn.Module, mesh, precision: str | None = None, reshard_after_forward: bool = True
) -> None:
    """``fully_shard`` every decoder block, then the root, on ``mesh`` (1-D, data parallel). In place."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    blocks = tuple(decoder_block_classes(model))
    for module in model.modules():
        if isinstance(module, blocks):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)


# ---- weights for the engine ----------------------------------------------------------------------------
def clean_param_name(name: str) -> str:
    """A parameter's Hugging Face name, without the prefixes wrappers insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank if it is a DTensor shard (a collective), else itself."""
    from torch.distributed.tensor import DTensor

    t = t.detach()
    return t.full_tensor() if isinstance(t, DTensor) else t


def drain(stream: Iterable) -> None:
    """Consume what is left of a weight stream (e.g. :func:`full_named_weights`): each sharded tensor in it is
    a collective, so every rank must take it to the end, even where its engine needs none or stopped early."""
    for _ in stream:
        pass


def full_named_weights(
    model: nn.Module, fsdp1_root: nn.Module | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) of every parameter, gathered and yielded one at a time.

    Every rank must drain this iterator in the same order (each sharded tensor is an all-gather). A tied
    output head is yielded as ``lm_head.weight`` too: engines keep their own head tensor. Under FSDP1,
    ``fsdp1_root`` is the outermost FSDP unit (it owns the parameters outside the decoder blocks); the
    blocks are then gathered one unit at a time.
    """
    if fsdp1_root is not None:
        yield from _fsdp1_named_weights(model, fsdp1_root)
        return
    head = model.get_output_embeddings().weight if _tied(model) else None
    for name, p in model.named_parameters():
        t = full_tensor(p)
        yield clean_param_name(name), t
        if p is head:  # the tied head is the input embedding: yielded again, not gathered again
            yield "lm_head.weight", t


def _tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


@contextmanager
def fsdp1_root_gathered(root: nn.Module | None) -> Iterator[None]:
    """Under FSDP1 the root unit's parameters (embeddings, final norm, head) are gathered only by the
    root's own forward; calling the policy directly (pi_t log-probs) needs them gathered around it."""
    if root is None:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(root, recurse=False, writeback=False):
        yield


def _fsdp1_named_weights(model: nn.Module, root: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """FSDP1 (``use_orig_params=True``): inside ``summon_full_params`` the original parameters are full
    views, valid until the context closes, so each is yielded (and copied by the consumer) inside it."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    units = [(n, m) for n, m in model.named_modules() if isinstance(m, FSDP) and m is not root]
    in_units = {id(p) for _, m in units for p in m.parameters()}
    with FSDP.summon_full_params(root, recurse=False, writeback=False):
        for prefix, unit in units:
            with FSDP.summon_full_params(unit, recurse=False, writeback=False):
                for name, p in unit.named_parameters():
                    yield clean_param_name(f"{prefix}.{name}" if prefix else name), p.detach()
        for name, p in model.named_parameters():
            if id(p) not in in_units:
                yield clean_param_name(name), p.detach()
        if _tied(model):
            yield "lm_head.weight", model.get_output_embeddings().weight.detach()
