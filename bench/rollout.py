"""Benchmark: rollout throughput, the vLLM engine vs Hugging Face ``generate``, same prompts and sampling.

    python -m bench.rollout [--model models/SmolLM2-135M-Instruct] [--prompts 32] [--k 4] [--max-tokens 128]

Both engines are sppo-pl's own (``sppo_pl.rollout``): the colocated vLLM engine and the ``rollout=hf``
fallback (left-padded batches of 16 prompts), on arithmetic prompts (:func:`prompts`), K samples each at
T = 0.7, with per-prompt seeds. Each engine is warmed up once, then timed ``--repeats`` times; tokens/s is
generated tokens (EOS included) over wall time, and the ratio is of the medians. Results:
``bench/results/rollout.{json,md}``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.common import run_info, write_results


def prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` arithmetic training prompts, through the chat template: 2-3 digit operands (the data source's
    defaults, the default run's task until 2026-11-27; it now asks 1-2 digits), the same prompts as every
    result recorded in bench/results/."""
    from sppo_pl.data.arithmetic import arithmetic_splits
    from sppo_pl.datamodule import encode_prompt

    rows = arithmetic_splits(n_train=n, n_test=1, seed=seed)["train"]
    return [encode_prompt(tokenizer, row["prompt"]) for row in rows]


def timed(engine, ids: list[list[int]], sampling, repeats: int) -> dict:
    """Median seconds and tokens/s of ``engine.generate`` over ``repeats`` runs after one warm-up."""
    from sppo_pl.rollout.base import request_seeds

    engine.generate(ids[:2], sampling, request_seeds(1, 0, 2))  # warm-up
    seconds, tokens = [], []
    for r in range(repeats):
        seeds = request_seeds(0, r, len(ids))
        start = time.perf_counter()
        gens = engine.generate(ids, sampling, seeds)
        seconds.append(time.perf_counter() - start)
        tokens.append(sum(len(t) for g in gens for t in g.token_ids))
    s = statistics.median(seconds)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "median_s": s,
        "tokens_per_s": statistics.median(t / x for t, x in zip(tokens, seconds)),
    }


def rollout_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The arguments every rollout bench takes: model, prompts, K, max tokens, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = rollout_parser(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer

    from sppo_pl.module import load_policy
    from sppo_pl.rollout.base import SamplingConfig
    from sppo_pl.rollout.hf_engine import HFEngine
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(args.model)
    ids = prompts(tok, args.prompts)
    sampling = SamplingConfig(n=args.k, temperature=0.7, top_p=1.0, max_tokens=args.max_tokens)
    max_len = max(len(p) for p in ids) + args.max_tokens
    vllm = timed(VLLMEngine(args.model, max_model_len=max_len, use_tqdm=False), ids, sampling, args.repeats)
    policy = load_policy(args.model).eval()
    hf = timed(HFEngine(policy, tok, batch_size=args.hf_batch_size), ids, sampling, args.repeats)
    result = run_info(
        model=args.model,
        prompts=args.prompts,
        k=args.k,
        max_tokens=args.max_tokens,
        temperature=0.7,
        vllm=vllm,
        hf_generate=hf,
        speedup_tokens_per_s=vllm["tokens_per_s"] / hf["tokens_per_s"],
        speedup_wall=hf["median_s"] / vllm["median_s"],
    )
    lines = [
        f"# Rollout: {args.prompts} prompts x K = {args.k}, up to {args.max_tokens} tokens, T = 0.7 "
        f"({result['date']}, {result['machine']})",
        "",
        "| engine | median wall s | tokens/s (median) |",
        "|---|---|---|",
        f"| vLLM (sppo_pl VLLMEngine) | {vllm['median_s']:.2f} | {vllm['tokens_per_s']:.0f} |",
        f"| HF generate (rollout=hf, batches of {args.hf_batch_size}) | {hf['median_s']:.2f} | "
        f"{hf['tokens_per_s']:.0f} |",
        "",
        f"vLLM / HF: {result['speedup_tokens_per_s']:.2f}x tokens/s, {result['speedup_wall']:.2f}x wall time",
    ]
    write_results("rollout", result, lines)


if __name__ == "__main__":
    main()
