"""Benchmark: what vLLM's CPU weight prepacking costs a weight sync, and what it buys generation.

    python -m bench.cpu_prepack [--model models/SmolLM2-135M-Instruct] [--prompts 32] [--k 4] [--repeats 5]

vLLM's CPU backend keeps each linear layer's weight only in a oneDNN-packed form, so a sync into the running
engine must unpack, load and pack every layer again (``reload_weights``); sppo-pl's sync is that call
(``VLLMEngine.sync_weights``). This bench measures, in one run and one engine per mode (each in its own
process): ``packed``, vLLM as shipped; ``unpacked``, the same engine with oneDNN switched off before it is
built (``vllm._custom_ops._supports_onednn = False``: linear layers run ``torch.nn.functional.linear`` on
plain weights, a bench-only patch, never done by sppo-pl). For each: generation tokens/s (bench.rollout's
prompts and sampling), the median ``sync_weights`` time, a direct in-place ``model.load_weights`` (what
TRL's and verl's colocated vLLM syncs call; it needs plain weights, so packed engines refuse it), and the
bound, a plain copy of the same tensors. Results: ``bench/results/cpu_prepack.{json,md}``. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import ROOT, run_info, timed_seconds, write_results


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``fn`` after 2 untimed calls (a process's first syncs run slower, while the
    allocator grows its pools)."""
    return statistics.median(timed_seconds(fn, repeats, warmup=2))


def measure(mode: str, model: str, n_prompts: int, k: int, max_tokens: int, repeats: int) -> dict:
    """One engine in this process, packed or not; returns what it measured."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if mode == "unpacked":
        import vllm._custom_ops as ops

        ops._supports_onednn = False
    from transformers import AutoTokenizer

    from bench.rollout import prompts, timed
    from sppo_pl.distributed import full_named_weights
    from sppo_pl.module import load_policy
    from sppo_pl.rollout.base import SamplingConfig
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    ids = prompts(AutoTokenizer.from_pretrained(model), n_prompts)
    sampling = SamplingConfig(n=k, temperature=0.7, top_p=1.0, max_tokens=max_tokens)
    engine = VLLMEngine(model, max_model_len=max(map(len, ids)) + max_tokens, use_tqdm=False)
    gen = timed(engine, ids, sampling, 3)
    weights = [(n, t.clone()) for n, t in full_named_weights(load_policy(model))]
    copies = [torch.empty_like(t) for _, t in weights]
    out = {
        "tokens_per_s": gen["tokens_per_s"],
        "synced_GiB": sum(t.numel() * t.element_size() for _, t in weights) / 2**30,
        "sync_s": median_seconds(lambda: engine.sync_weights(iter(weights)), repeats),
        "plain_copy_s": median_seconds(lambda: [c.copy_(t) for c, (_, t) in zip(copies, weights)], repeats),
    }
    try:
        load = lambda: engine.llm.apply_model(lambda m: m.load_weights(iter(weights)))  # noqa: E731
        out["load_weights_s"] = median_seconds(load, repeats)
    except Exception as e:  # packed layers hold no plain weight to load into
        out["load_weights_error"] = f"{type(e).__name__}: {e}"[:200]
    return out


def run_mode(mode: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.cpu_prepack", "--mode", mode, "--result", str(res)]
        cmd += ["--model", args.model, "--prompts", str(args.prompts), "--k", str(args.k)]
        cmd += ["--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
        return json.loads(res.read_text())


def table(result: dict) -> list[str]:
    lines = [
        f"# vLLM CPU weight prepacking: {result['prompts']} prompts x K = {result['k']}, "
        f"{result['synced_GiB']:.3f} GiB synced ({result['date']}, {result['machine']})",
        "",
        "| engine | generation tokens/s | sync_weights s | sync / plain copy | load_weights s | plain copy s |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("packed", "unpacked"):
        r = result[mode]
        load = f"{r['load_weights_s']:.3f}" if "load_weights_s" in r else "refused"
        lines.append(
            f"| {mode} | {r['tokens_per_s']:.0f} | {r['sync_s']:.3f} | {r['sync_s'] / r['plain_copy_s']:.1f}x"
            f" | {load} | {r['plain_copy_s']:.3f} |"
        )
    p, u = result["packed"], result["unpacked"]
    lines += ["", f"unpacked / packed generation tokens/s: {u['tokens_per_s'] / p['tokens_per_s']:.2f}x"]
    if "load_weights_s" in u:
        lines.append(f"unpacked load_weights / plain copy: {u['load_weights_s'] / u['plain_copy_s']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> None:
    from bench.rollout import rollout_parser

    parser = rollout_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--mode", choices=["packed", "unpacked"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:  # one engine, in a process of its own
        out = measure(args.mode, args.model, args.prompts, args.k, args.max_tokens, args.repeats)
        Path(args.result).write_text(json.dumps(out))
        return
    result = run_info(model=args.model, prompts=args.prompts, k=args.k, max_tokens=args.max_tokens)
    for mode in ("packed", "unpacked"):
        result[mode] = run_mode(mode, args)
    result["synced_GiB"] = result["packed"]["synced_GiB"]
    write_results("cpu_prepack", result, table(result))


if __name__ == "__main__":
    main()
