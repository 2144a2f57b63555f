"""Benchmark: memory per rank and weight-sync speed, 1 rank vs 2 FSDP2 ranks (gloo on CPU, NCCL on GPUs).

    python -m bench.sharding [--model models/SmolLM2-135M-Instruct] [--repeats 5] [--no-engine]

Each rank loads the policy, shards it (2 ranks), takes one AdamW SPPO step on a fixed batch, and reports
the bytes it holds of parameters, gradients and optimizer state (exact, from the local shards) and its
peak RSS. Then it times the sharded weight sync: the gather alone (``full_named_weights``: every parameter
``full_tensor``-ed and dropped, one at a time), the same gather one FSDP unit at a time (``unshard()`` of
each decoder block, then of the root: one all-gather per unit instead of one per tensor, the alternative
measured), and the gather streamed into a running vLLM engine on every rank (``--no-engine`` skips that),
against the bound of a plain copy of the same full tensors; each after untimed warm-ups. Results:
``bench/results/sharding.json`` and ``.md``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import machine, timed_seconds, write_results


def _nbytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def _batch(tok, n_prompts: int = 4, k: int = 4, response_len: int = 64):
    from sppo_pl.datamodule import collate_rollouts, encode_prompt
    from sppo_pl.types import Rollout

    g = torch.Generator().manual_seed(0)
    rollouts = [
        Rollout(
            f"p{i}",
            encode_prompt(tok, f"What is {i} + {i}?"),
            [""] * k,
            [torch.randint(3, len(tok), (response_len,), generator=g).tolist() for _ in range(k)],
            scores=[0.0] * k,
            p_hat=torch.rand(k, generator=g).tolist(),
            ref_logps=[-100.0] * k,
        )
        for i in range(n_prompts)
    ]
    return collate_rollouts(rollouts, tok.pad_token_id)


def _rank(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoTokenizer

    from sppo_pl.distributed import full_named_weights, shard_fsdp2
    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule

    tok = AutoTokenizer.from_pretrained(args.model)
    module = SPPOModule(args.model, loss=SPPOLoss(eta=1e3))
    if world > 1:
        shard_fsdp2(module.policy, init_device_mesh("cpu", (world,)))
    params = list(module.policy.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = _batch(tok)
    logps = module.policy_logps(batch)
    module.loss_fn(logps, batch["ref_logps"], batch["p_hat"], batch["scores"]).loss.backward()
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    row = {
        "rank": rank,
        "param_bytes": _nbytes(params),
        "grad_bytes": _nbytes(p.grad for p in params),
        "optimizer_bytes": _nbytes(state),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    opt.zero_grad(set_to_none=True)
    full_bytes = sum(t.numel() * t.element_size() for _, t in full_named_weights(module.policy))
    row |= {
        "synced_bytes": full_bytes,
        "gather_s": _drain_s(lambda: full_named_weights(module.policy), args.repeats),
        "gather_per_unit_s": _drain_s(lambda: _unit_gather(module.policy), args.repeats),
        "copy_s": _plain_copy_s(module.policy, args.repeats),
    }
    if not args.no_engine:
        from sppo_pl.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(
            module.hparams.model_path,
            dtype=module.hparams.dtype,
            max_model_len=256,
            use_tqdm=False,
            cpu_kv_cache_gb=1,
        )
        sync = lambda: engine.sync_weights(module.named_weights())  # noqa: E731
        # two warm-ups: a process's first syncs run slower (allocator)
        row["sync_s"] = timed_seconds(sync, args.repeats, warmup=2, before=dist.barrier)
    Path(out, f"w{world}_r{rank}.json").write_text(json.dumps(row))
    dist.barrier()


def _drain_s(tensors, repeats: int) -> list[float]:
    """Seconds to drain the iterator ``tensors()`` (a collective on every rank), after one warm-up."""

    def drain() -> None:
        for _ in tensors():
            pass

    return timed_seconds(drain, repeats, warmup=1, before=dist.barrier)


def _unit_gather(policy):
    """Every parameter, full, gathered one FSDP unit at a time (``unshard``), each copied out before the unit
    is resharded; on one process, the parameters as they are."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield from (p.detach() for p in policy.parameters())
        return
    seen: set[int] = set()
    for unit in reversed(units):  # blocks first, the root (embeddings, norm, head) last
        unit.unshard()
        for p in unit.parameters():
            if id(p) not in seen and not isinstance(p, torch.distributed.tensor.DTensor):
                seen.add(id(p))
                yield p.detach().clone()
        unit.reshard()


def _plain_copy_s(policy, repeats: int) -> list[float]:
    """The bound for a sync: copying the same full tensors, already gathered, into preallocated tensors of
    the same shapes (what loading weights in place must do at least), one at a time."""
    from sppo_pl.distributed import full_named_weights

    src = [t.detach().clone() for _, t in full_named_weights(policy)]
    dst = [torch.empty_like(t) for t in src]
    return timed_seconds(lambda: [d.copy_(t) for d, t in zip(dst, src)], repeats)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(rows: list[dict], world: int) -> dict:
    r0 = rows[0]
    gib = r0["synced_bytes"] / 2**30
    out = {
        "world": world,
        "params_grads_optimizer_MiB_per_rank": max(
            (r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"]) / 2**20 for r in rows
        ),
        "param_MiB_per_rank": max(r["param_bytes"] for r in rows) / 2**20,
        "optimizer_MiB_per_rank": max(r["optimizer_bytes"] for r in rows) / 2**20,
        "peak_rss_MiB_per_rank": max(r["peak_rss_bytes"] for r in rows) / 2**20,
        "synced_GiB": gib,
        "gather_s_median": statistics.median(r0["gather_s"]),
        "gather_s_per_GiB": statistics.median(r0["gather_s"]) / gib,
        "gather_per_unit_s_median": statistics.median(r0["gather_per_unit_s"]),
        "plain_copy_s_median": statistics.median(r0["copy_s"]),
        "plain_copy_s_per_GiB": statistics.median(r0["copy_s"]) / gib,
    }
    if "sync_s" in r0:
        out["sync_s_median"] = statistics.median(r0["sync_s"])
        out["sync_s_per_GiB"] = out["sync_s_median"] / gib
        out["sync_over_plain_copy"] = out["sync_s_median"] / out["plain_copy_s_median"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-engine", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sharding_ranks_"))  # one JSON per rank, summarised below
    summaries = []
    for world in (1, 2):
        mp.spawn(_rank, args=(world, _free_port(), args, str(tmp)), nprocs=world)
        rows = [json.loads((tmp / f"w{world}_r{r}.json").read_text()) for r in range(world)]
        summaries.append(_summary(rows, world))
    one, two = summaries
    result = {
        "model": args.model,
        "machine": machine(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "runs": summaries,
        "state_ratio_2_vs_1": two["params_grads_optimizer_MiB_per_rank"]
        / one["params_grads_optimizer_MiB_per_rank"],
    }
    keys = [k for k in summaries[0] if k != "world"]
    lines = ["| metric | 1 rank | 2 ranks (FSDP2) |", "|---|---|---|"]
    lines += [f"| {k} | {one[k]:.3f} | {two.get(k, float('nan')):.3f} |" for k in keys]
    lines.append(f"\nparams+grads+optimizer per rank, 2 vs 1: {result['state_ratio_2_vs_1']:.3f}x")
    write_results("sharding", result, lines)


if __name__ == "__main__":
    main()
