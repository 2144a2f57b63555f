"""Benchmark: which arithmetic task gives the default run the most signal? Measured on the starting model.

    python -m bench.task_choice [--tasks "+-*:2:2" "+-:2:2" ...] [--prompts 32] [--k 8] [-- <overrides>]

For each task (``ops:min_digits:max_digits`` of ``data=arithmetic``) it loads SmolLM2-135M-Instruct in vLLM
once and measures what decides whether SPPO can learn from it, as ``python train.py`` would sample and score
it: the model, ``rollout.sampling`` and ``reward`` come from ``conf/`` (``train.yaml`` with any Hydra overrides
after ``--``; today temperature 0.7, 128 new tokens and the numeric verifier), prompts through the chat template:

- greedy accuracy on the 128 held-out problems (the starting ``val/acc``);
- on ``--prompts`` training prompts with ``--k`` samples each: the samples' accuracy, and the share of
  *informative* groups (some samples right, some wrong: P_hat is not 1/2 everywhere) among the first 4 and
  all ``--k`` samples of each prompt, the groups ``rollout.drop_ties`` keeps;
- the mean response length and the generation's seconds.

The issue asks for a task where the model starts between 10% and 40% and its samples disagree often.
Results: ``bench/results/task_choice.{json,md}``. About 2 minutes a task on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import run_info, train_config, write_results
from sppo_pl.report import markdown_table

DEFAULT_TASKS = ["+-*:2:2", "+-:2:2", "+-*:1:2", "+-:1:2", "+:2:3", "*:1:2"]


def parse_task(spec: str) -> dict:
    """``"+-*:2:2"`` -> ``{"ops": ["+", "-", "*"], "min_digits": 2, "max_digits": 2}``."""
    ops, lo, hi = spec.split(":")
    return {"ops": list(ops), "min_digits": int(lo), "max_digits": int(hi)}


def informative_share(correct: list[list[float]], k: int) -> float:
    """The share of groups whose first ``k`` samples are neither all right nor all wrong."""
    return statistics.mean(float(0 < sum(c[:k]) < k) for c in correct)


def measure(engine, tokenizer, cfg, spec: str, n_prompts: int, k: int) -> dict:
    """One task's row; ``cfg``: the composed train config (sampling settings and the oracle)."""
    from hydra.utils import instantiate

    from sppo_pl.data.arithmetic import arithmetic_splits
    from sppo_pl.datamodule import encode_prompt
    from sppo_pl.rollout.base import SamplingConfig, request_seeds, validation_sampling

    splits = arithmetic_splits(n_train=4096, n_test=128, seed=0, **parse_task(spec))
    test, train = splits["test"], splits["train"].select(range(n_prompts))
    ids = lambda rows: [encode_prompt(tokenizer, p) for p in rows["prompt"]]  # noqa: E731

    sampling = SamplingConfig(**{**cfg.rollout.sampling, "n": k})
    oracle = instantiate(cfg.reward.oracle)
    start = time.perf_counter()
    greedy = engine.generate(ids(test), validation_sampling(sampling, cfg.rollout.val_max_tokens))
    sampled = engine.generate(ids(train), sampling, request_seeds(cfg.seed, 0, n_prompts))
    gen_s = time.perf_counter() - start
    val = oracle.score(test["prompt"], [g.texts[0] for g in greedy], answer=test["answer"])
    correct = [
        oracle.score([p] * k, g.texts, answer=[a] * k)
        for g, p, a in zip(sampled, train["prompt"], train["answer"])
    ]
    lengths = [len(t) for g in greedy + sampled for t in g.token_ids]
    return {
        "task": spec,
        "val_acc": statistics.mean(val),
        "sample_acc": statistics.mean(x for c in correct for x in c),
        "informative_k4": informative_share(correct, 4),
        f"informative_k{k}": informative_share(correct, k),
        "response_tokens": statistics.mean(lengths),
        "gen_s": gen_s,
    }


def table_columns(k: int) -> list[str]:
    """The result table's columns: the informative share at 4 samples and at ``k`` (once when ``k`` is 4)."""
    cols = ["val_acc", "sample_acc", "informative_k4", f"informative_k{k}", "response_tokens", "gen_s"]
    return list(dict.fromkeys(cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, after --")
    args = ap.parse_args()
    cfg = train_config(args.overrides)

    from transformers import AutoTokenizer

    from sppo_pl.rollout.vllm_engine import VLLMEngine

    model = cfg.model.path
    tokenizer = AutoTokenizer.from_pretrained(model)
    max_len = cfg.model.max_prompt_len + cfg.model.max_response_len
    engine = VLLMEngine(model, dtype=cfg.model.dtype, max_model_len=max_len, use_tqdm=False)
    rows = [measure(engine, tokenizer, cfg, spec, args.prompts, args.k) for spec in args.tasks]
    engine.close()
    cols = table_columns(args.k)
    lines = [
        f"# Arithmetic tasks on the starting SmolLM2-135M-Instruct ({run_info()['date']})",
        "",
        f"`python -m bench.task_choice`: greedy accuracy on 128 held-out problems; {args.prompts} training "
        f"prompts x {args.k} samples at temperature {cfg.rollout.sampling.temperature}, up to "
        f"{cfg.rollout.sampling.max_tokens} tokens, scored by `{cfg.reward.oracle._target_}` "
        "(informative: some samples right, some wrong).",
        "",
        markdown_table("task (ops:digits)", cols, ((r["task"], [r[c] for c in cols]) for r in rows)),
    ]
    info = run_info(prompts=args.prompts, k=args.k, overrides=args.overrides, rows=rows)
    write_results("task_choice", info, lines)


if __name__ == "__main__":
    main()
