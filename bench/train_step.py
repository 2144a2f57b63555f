"""Benchmark: the SPPO training step, against this machine's matmul peak and against TRL's sppo_hard step.

    python -m bench.train_step [--model models/SmolLM2-135M-Instruct] [--pairs 8] [--repeats 5] [--no-trl]
                               [--device cuda]

The batch: ``--pairs`` arithmetic prompts, each with a winner and a loser response of ``--response-words``
words (16 sequences by default), the same texts for both trainers. sppo-pl's step is ``SPPOModule``'s
(sequence log-probs, the ``sppo_hard`` loss, backward, AdamW step); TRL's is ``DPOTrainer`` with
``loss_type="sppo_hard"`` and precomputed reference log-probs (so neither step runs a reference model), timed
per optimizer step by a callback. TRL is never a dependency of sppo-pl: ``make bench-trl`` installs it into
``.venv/bench-trl`` (or the folder ``SPPO_BENCH_TRL`` names) and this script runs TRL's side in a subprocess
with that on ``PYTHONPATH``.

FLOPs of a step are 6 x (matmul parameters) x (positions) for forward and backward over the padded batch
actually computed: the decoder's parameters at every position, and the output head's (vocabulary x hidden)
only at the response positions whose logits are kept; the input embedding lookup and attention scores left
out. The peak is the best
median of square matmuls timed in the same run, in the step's compute dtype: fp32 on CPU; on a GPU
(``--device cuda``) both steps run in bf16 mixed precision (fp32 weights, bf16 autocast, as Lightning's
``bf16-mixed`` and TRL's ``bf16=True``) and the peak is bf16's. Results:
``bench/results/train_step[_cuda].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, run_info, timed_seconds, write_results

TRL_PATH = Path(os.environ.get("SPPO_BENCH_TRL", ROOT / ".venv" / "bench-trl"))


def compute_dtype(device: str) -> torch.dtype:
    """The dtype the step's matmuls run in: fp32 on CPU, bf16 (autocast) on a GPU."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def matmul_peak(device: str = "cpu", sizes=None, repeats: int = 5) -> dict:
    """Best median FLOP/s of ``n x n @ n x n`` in ``compute_dtype(device)`` over ``sizes`` (2 n^3 FLOPs each)."""
    sizes = sizes or ((512, 1024, 2048) if device == "cpu" else (4096, 8192))
    dtype = compute_dtype(device)
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            times.append(time.perf_counter() - start)
        best[n] = 2 * n**3 / statistics.median(times)
    return {"dtype": str(dtype), "per_size_flops": best, "peak_flops": max(best.values())}


def batch_texts(n: int, words: int) -> list[dict]:
    """Prompts (arithmetic problems, as :func:`bench.rollout.prompts`) with a winner and a loser response."""
    from sppo_pl.data.arithmetic import arithmetic_splits

    rows = arithmetic_splits(n_train=n, n_test=1, seed=0)["train"]
    filler = " ".join(["the", "sum", "of", "these", "two", "numbers", "is", "computed", "step", "by"] * words)
    out = []
    for row in rows:
        answer = row["answer"]
        body = " ".join(filler.split()[:words])
        out.append(
            {
                "prompt": row["prompt"],
                "chosen": f"{body} so the answer is \\boxed{{{answer}}}.",
                "rejected": f"{body} so the answer is \\boxed{{{int(answer) + 1}}}.",
            }
        )
    return out


def profile_step(step, device: str, out: Path, rows: int = 25) -> None:
    """One more step under ``torch.profiler``: the ops by total time, written to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_cpu_time_total" if device == "cpu" else "self_device_time_total"
    out.write_text(prof.key_averages().table(sort_by=key, row_limit=rows) + "\n")


def sppo_step(
    model: str,
    texts: list[dict],
    repeats: int,
    lr: float,
    beta: float,
    device: str = "cpu",
    profile: Path | None = None,
) -> dict:
    """Median seconds of sppo-pl's step on the batch, and its token counts."""
    from transformers import AutoTokenizer

    from sppo_pl.datamodule import collate_rollouts, encode_prompt
    from sppo_pl.losses import SPPOHardLoss
    from sppo_pl.module import SPPOModule
    from sppo_pl.types import Rollout

    tok = AutoTokenizer.from_pretrained(model)
    eos = tok.eos_token_id

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] + [eos]

    rollouts = [
        Rollout(
            t["prompt"],
            encode_prompt(tok, t["prompt"]),
            [t["chosen"], t["rejected"]],
            [ids(t["chosen"]), ids(t["rejected"])],
            scores=[1.0, 0.0],
            p_hat=[0.75, 0.25],
            ref_logps=[-50.0, -50.0],
        )
        for t in texts
    ]
    batch = {k: v.to(device) for k, v in collate_rollouts(rollouts, tok.pad_token_id).items()}
    module = SPPOModule(model, loss=SPPOHardLoss(eta=1 / beta)).to(device)
    opt = torch.optim.AdamW(module.policy.parameters(), lr=lr)
    autocast = torch.autocast(device, dtype=compute_dtype(device), enabled=device != "cpu")

    def step() -> None:
        with autocast:
            logps = module.policy_logps(batch)
            loss = module.loss_fn(logps, batch["ref_logps"], batch["p_hat"], batch["scores"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)

    times = timed_seconds(step, repeats, warmup=1, before=lambda: synchronize(device))
    if profile is not None:
        profile_step(step, device, profile)
    params = sum(p.numel() for p in module.policy.parameters())
    head = module.policy.get_output_embeddings().weight.numel()
    body = params - head if module.policy.config.tie_word_embeddings else params - 2 * head
    rows, kept = batch["response_mask"].shape[0], batch["response_mask"].shape[1] + 1
    return {
        "step_s": times,
        "median_s": statistics.median(times),
        "padded_tokens": batch["input_ids"].numel(),
        "tokens": int(batch["attention_mask"].sum()),
        "parameters": params,
        "flops": 6 * (body * batch["input_ids"].numel() + head * rows * kept),
    }


def trl_step(
    model: str, texts: list[dict], repeats: int, lr: float, beta: float, device: str = "cpu"
) -> dict:
    """TRL's side, in a subprocess with ``.venv/bench-trl`` on the path."""
    if not (TRL_PATH / "trl").exists():
        raise FileNotFoundError(
            f"TRL is not installed in {TRL_PATH}: run `make bench-trl` first (or --no-trl)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {"model": model, "texts": texts, "repeats": repeats, "lr": lr, "beta": beta, "device": device}
            )
        )
        paths = [str(TRL_PATH), str(ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        proc = subprocess.run(
            [sys.executable, "-m", "bench.trl_step", str(spec)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(f"TRL step failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--response-words", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for bf16 mixed precision on a GPU")
    parser.add_argument("--profile", action="store_true", help="also write one step's torch.profiler table")
    args = parser.parse_args(argv)
    name = "train_step" if args.device == "cpu" else f"train_step_{args.device}"
    profile = RESULTS / f"{name}_profile.txt" if args.profile else None
    lr, beta = 1e-5, 0.1
    texts = batch_texts(args.pairs, args.response_words)
    peak = matmul_peak(args.device)
    ours = sppo_step(args.model, texts, args.repeats, lr, beta, args.device, profile)
    flops = ours["flops"] / ours["median_s"]
    result = run_info(
        model=args.model,
        device=args.device,
        threads=torch.get_num_threads(),
        matmul=peak,
        sppo_pl=ours | {"tokens_per_s": ours["tokens"] / ours["median_s"], "flops_per_s": flops},
        fraction_of_peak=flops / peak["peak_flops"],
    )
    if not args.no_trl:
        theirs = trl_step(args.model, texts, args.repeats, lr, beta, args.device)
        result["trl"] = theirs
        result["trl_over_sppo_pl_time"] = theirs["median_s"] / ours["median_s"]
    lines = [
        f"# Training step: {args.pairs} prompts x (winner, loser), {ours['tokens']} tokens "
        f"({ours['padded_tokens']} padded) ({result['date']}, {result['machine']}, {result['threads']} threads)",
        "",
        "| step | median s | tokens/s | FLOP/s | of matmul peak |",
        "|---|---|---|---|---|",
        f"| sppo-pl (SPPOModule, sppo_hard) | {ours['median_s']:.3f} | {ours['tokens'] / ours['median_s']:.0f} | "
        f"{flops / 1e9:.1f} G | {result['fraction_of_peak']:.1%} |",
    ]
    if "trl" in result:
        t = result["trl"]
        lines.append(
            f"| TRL {t['version']} DPOTrainer (sppo_hard) | {t['median_s']:.3f} | "
            f"{t['tokens'] / t['median_s']:.0f} | | |"
        )
        lines += ["", f"TRL time / sppo-pl time: {result['trl_over_sppo_pl_time']:.2f}x"]
    lines += [
        "",
        f"matmul peak ({peak['dtype']}, best of {sorted(peak['per_size_flops'])}): "
        f"{peak['peak_flops'] / 1e9:.1f} GFLOP/s",
    ]
    write_results(name, result, lines)


if __name__ == "__main__":
    main()
