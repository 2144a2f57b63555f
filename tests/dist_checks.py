"""Two-process (gloo) checks of the sharded path, run by tests/test_distributed.py.

``python -m tests.dist_checks CHECK MODEL_DIR OUT_DIR`` spawns 2 ranks; each writes ``rank{r}.json`` with
what it measured, and the test asserts on those files.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _rollouts(tokenizer, n_prompts: int = 4, k: int = 2):
    """Fixed prompt groups with fixed responses and win-rates (no sampling involved)."""
    from sppo_pl.datamodule import encode_prompt
    from sppo_pl.types import Rollout

    g = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    out = []
    for i in range(n_prompts):
        responses = [torch.randint(3, vocab, (5 + 2 * j + i,), generator=g).tolist() for j in range(k)]
        wins = torch.rand(k, generator=g).tolist()
        out.append(
            Rollout(
                f"p{i}",
                encode_prompt(tokenizer, f"What is {i} + {i}?"),
                [""] * k,
                responses,
                scores=[0.0] * k,
                p_hat=wins,
            )
        )
    return out


def _loss(module, rollouts, pad_id):
    from sppo_pl.datamodule import collate_rollouts

    batch = collate_rollouts(rollouts, pad_id)
    return module.loss_fn(
        module.policy_logps(batch), batch["ref_logps"], batch["p_hat"], batch["scores"]
    ).loss


def _step(module, rollouts, pad_id, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(module.policy.parameters(), lr=lr)
    _loss(module, rollouts, pad_id).backward()
    opt.step()
    opt.zero_grad()


def check_step(rank: int, model_dir: str) -> dict:
    """A sharded SGD step on half the batch per rank vs one process on the whole batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers import AutoTokenizer

    from sppo_pl.distributed import full_named_weights, shard_fsdp2
    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id
    rollouts = _rollouts(tok)

    single = SPPOModule(model_dir, loss=SPPOLoss(eta=10.0))
    single.compute_ref_logps(rollouts, pad)  # pi_t = the weights on disk, the same for both runs
    _step(single, rollouts, pad)
    with torch.no_grad():
        single_after = float(_loss(single, rollouts, pad))
    want = dict(full_named_weights(single.policy))

    sharded = SPPOModule(model_dir, loss=SPPOLoss(eta=10.0))
    shard_fsdp2(sharded.policy, init_device_mesh("cpu", (WORLD,)))
    params = list(sharded.policy.parameters())
    half = rollouts[rank * 2 : rank * 2 + 2]
    _step(sharded, half, pad)  # FSDP averages the two ranks' gradients: the gradient of the whole batch
    with torch.no_grad():
        mine = _loss(sharded, half, pad).detach().reshape(1)
    dist.all_reduce(mine)
    got = dict(full_named_weights(sharded.policy))
    return {
        "all_dtensor": all(isinstance(p, DTensor) for p in params),
        "local_fraction": sum(p.to_local().numel() for p in params) / sum(p.numel() for p in params),
        "single_loss_after": single_after,
        "sharded_loss_after": float(mine) / WORLD,
        "max_param_diff": max(float((got[n] - want[n]).abs().max()) for n in want),
        "moved": max(
            float((want[n] - w).abs().max())
            for n, w in SPPOModule(model_dir, loss=SPPOLoss()).named_weights()
        ),
    }


def check_sync(rank: int, model_dir: str, mode: str) -> dict:
    """Sharded weight sync into vLLM: engine greedy == HF greedy of the gathered policy, over two syncs."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoTokenizer

    from sppo_pl.datamodule import encode_prompt
    from sppo_pl.distributed import full_named_weights, shard_fsdp2
    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule, load_policy
    from sppo_pl.rollout.base import SamplingConfig
    from sppo_pl.rollout.hf_engine import HFEngine
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(model_dir)
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
    module = SPPOModule(model_dir, loss=SPPOLoss(eta=10.0))
    shard_fsdp2(module.policy, init_device_mesh("cpu", (WORLD,)))
    generates = mode == "colocate" or rank == 0
    engine = (
        VLLMEngine(model_dir, dtype="float32", max_model_len=256, use_tqdm=False)
        if generates
        else VLLMEngine.peer()
    )
    gathered = load_policy(model_dir)  # a plain copy that receives the gathered weights, for HF greedy
    hf = HFEngine(gathered, tok)
    prompts = [encode_prompt(tok, f"What is {a} + {b}?") for a, b in [(12, 34), (56, 7), (81, 19)]]
    rollouts = _rollouts(tok)[rank * 2 : rank * 2 + 2]
    results = []
    for _ in range(2):
        module.compute_ref_logps(rollouts, tok.pad_token_id)
        _step(module, rollouts, tok.pad_token_id, lr=0.5)
        full = dict(full_named_weights(module.policy))
        gathered.load_state_dict(full, strict=False)
        want = [g.token_ids for g in hf.generate(prompts, greedy)]
        if mode == "colocate" or rank == 0:
            stale = [g.token_ids for g in engine.generate(prompts, greedy)]
        engine.sync_weights(module.named_weights())
        if mode == "colocate" or rank == 0:
            got = [g.token_ids for g in engine.generate(prompts, greedy)]
            results.append({"stale_differs": stale != want, "equal": got == want})
    return {"syncs": results, "engine": type(engine).__name__}


def check_fsdp1(rank: int, model_dir: str) -> dict:
    """FSDP1 (as Lightning's FSDPStrategy wraps it: the LightningModule is the root, blocks are units):
    the streamed weights equal the unsharded ones, under the same names."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import AutoTokenizer

    from sppo_pl.distributed import full_named_weights
    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule
    from sppo_pl.strategy import DecoderBlockPolicy

    tok = AutoTokenizer.from_pretrained(model_dir)
    module = SPPOModule(model_dir, loss=SPPOLoss())
    want = [(n, t.clone()) for n, t in full_named_weights(module.policy)]
    rollouts = _rollouts(tok)
    module.compute_ref_logps(rollouts, tok.pad_token_id)
    want_logps = [r.ref_logps for r in rollouts]
    root = FSDP(
        module, auto_wrap_policy=DecoderBlockPolicy(), device_id=torch.device("cpu"), use_orig_params=True
    )
    local = [p.numel() for p in module.policy.model.layers[0].parameters()]
    got = [(n, t.clone()) for n, t in full_named_weights(module.policy, root)]
    module.fsdp1_root = lambda: root  # as under Lightning's FSDPStrategy
    module.compute_ref_logps(rollouts, tok.pad_token_id)  # calls the policy directly, not the root
    return {
        "logps_max_diff": max(
            abs(a - b) for r, w in zip(rollouts, want_logps) for a, b in zip(r.ref_logps, w)
        ),
        "blocks_wrapped": type(module.policy.model.layers[0]).__name__,
        "local_block_numel": sum(local),
        "full_block_numel": sum(t.numel() for n, t in want if n.startswith("model.layers.0.")),
        "names_equal": sorted(n for n, _ in want) == sorted(n for n, _ in got),
        "max_diff": max(float((dict(got)[n] - t).abs().max()) for n, t in want),
    }


def check_fsdp1_clip(rank: int, model_dir: str) -> dict:
    """Clipping by norm under FSDP1, which Lightning's FSDP precision refuses (``trainer.gradient_clip_val``):
    the module's own clipping of the sharded gradients equals one process clipping the whole gradient."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import FSDPPrecision
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import AutoTokenizer

    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule
    from sppo_pl.strategy import DecoderBlockPolicy

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad, rollouts, max_norm = tok.pad_token_id, _rollouts(tok), 1e-3
    single = SPPOModule(model_dir, loss=SPPOLoss(eta=10.0))
    single.compute_ref_logps(rollouts, pad)
    _loss(single, rollouts, pad).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(single.policy.parameters(), max_norm))
    want = {n: p.grad.clone() for n, p in single.policy.named_parameters()}

    module = SPPOModule(model_dir, loss=SPPOLoss(eta=10.0))
    module.forward = lambda rows: _loss(module, rows, pad)  # through the root, as Lightning's training_step
    root = FSDP(
        module, auto_wrap_policy=DecoderBlockPolicy(), device_id=torch.device("cpu"), use_orig_params=True
    )
    # the trainer as Lightning's FSDPStrategy leaves it: the root unit as its model, the FSDP precision plugin
    module._trainer = SimpleNamespace(
        strategy=SimpleNamespace(model=root),
        precision_plugin=FSDPPrecision("32-true"),
        gradient_clip_val=max_norm,
        gradient_clip_algorithm=None,
    )
    root(rollouts).backward()  # the whole batch on each rank: the averaged gradient is the single one
    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1), max_norm, "norm")
    with FSDP.summon_full_params(root, with_grads=True):
        got = {
            n.replace("_fsdp_wrapped_module.", ""): p.grad.clone()
            for n, p in module.policy.named_parameters()
        }
    return {
        "norm_before": norm,
        "names_equal": sorted(got) == sorted(want),
        "max_grad_diff": max(float((got[n] - g).abs().max()) for n, g in want.items()),
        "norm_after": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in got.values()]))),
    }


def check_gather(rank: int, model_dir: str) -> dict:
    """FSDP2's streamed weights equal the unsharded ones, names, dtypes and values, also under bf16 mixed
    precision (the stored fp32 tensors are gathered, not the bf16 ones the forward computes with)."""
    from torch.distributed.device_mesh import init_device_mesh

    from sppo_pl.distributed import full_named_weights, shard_fsdp2
    from sppo_pl.module import load_policy

    want = dict(full_named_weights(load_policy(model_dir)))
    result = {}
    for precision in ("32-true", "bf16-mixed"):
        model = load_policy(model_dir)
        shard_fsdp2(model, init_device_mesh("cpu", (WORLD,)), precision)
        got = list(full_named_weights(model))
        result[precision] = {
            "names_equal": sorted(n for n, _ in got) == sorted(want),
            "dtypes_equal": all(t.dtype == want[n].dtype for n, t in got),
            "max_diff": max(float((t - want[n]).abs().max()) for n, t in got),
            "sharded_after": all(type(p).__name__ == "DTensor" for p in model.parameters()),
        }
    result["tied_head"] = "lm_head.weight" in want
    return result


def _worker(rank: int, port: int, check: str, model_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    name, _, arg = check.partition(":")
    if name == "sync":
        result = check_sync(rank, model_dir, arg)
    else:
        result = {
            "step": check_step,
            "fsdp1": check_fsdp1,
            "fsdp1_clip": check_fsdp1_clip,
            "gather": check_gather,
        }[name](rank, model_dir)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # the process group stays up: the engine's own shutdown destroys its groups at exit


def main(check: str, model_dir: str, out: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, check, model_dir, out), nprocs=WORLD)


if __name__ == "__main__":
    main(*sys.argv[1:4])
