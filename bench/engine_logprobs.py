"""Benchmark: log pi_t from the vLLM engine's own sampled-token log-probs vs a no-grad pass of the policy.

    python -m bench.engine_logprobs [--model models/SmolLM2-135M-Instruct] [--prompts 32] [--k 4] [--steps 2]

The default run's model on arithmetic prompts (:func:`bench.rollout.prompts`), K samples each at the default sampling (T 0.7, top-p 1), first
from the model as loaded, then after ``--steps`` AdamW steps of the policy (lr 1e-4, so it moves) synced into
the engine. For every sampled response it compares the engine's log pi_t(y | x) (``module.reference=engine``)
with the policy's own (``module.reference=precompute``): per-token and per-response absolute differences,
and the seconds the precompute pass takes, which ``engine`` saves. Results:
``bench/results/engine_logprobs.{json,md}``. Run it alone on the machine.
"""

from __future__ import annotations

import statistics
import time

from bench.common import run_info, write_results
from bench.rollout import prompts, rollout_parser


def compare(module, gens, prompt_ids, pad_id: int) -> dict:
    """Differences between the engine's and the policy's log pi_t of every response, and the pass's seconds."""
    from sppo_pl.logprobs import summed_token_logps
    from sppo_pl.types import Rollout

    rollouts = [
        Rollout("", p, g.texts, g.token_ids, p_hat=[0.5] * len(g.texts)) for p, g in zip(prompt_ids, gens)
    ]
    start = time.perf_counter()
    module.compute_ref_logps(rollouts, pad_id)
    seconds = time.perf_counter() - start
    per_seq, per_token = [], []
    for r, g in zip(rollouts, gens):
        for lp, ids, ref in zip(g.logprobs, r.response_ids, r.ref_logps):
            diff = abs(summed_token_logps([lp], [ids])[0] - ref)
            per_seq.append(diff)
            per_token.append(diff / max(1, len(ids)))
    return {
        "responses": len(per_seq),
        "tokens": sum(len(ids) for r in rollouts for ids in r.response_ids),
        "precompute_s": seconds,
        "max_abs_diff_per_response": max(per_seq),
        "median_abs_diff_per_response": statistics.median(per_seq),
        "max_abs_diff_per_token": max(per_token),
        "median_abs_diff_per_token": statistics.median(per_token),
    }


def _step(module, gens, prompt_ids, pad_id: int, opt) -> None:
    """One AdamW step that raises the log-probs of the sampled responses: the policy moves away from the engine."""
    from sppo_pl.datamodule import collate_rollouts
    from sppo_pl.types import Rollout

    rollouts = [
        Rollout("", p, g.texts, g.token_ids, p_hat=[0.5] * len(g.texts)) for p, g in zip(prompt_ids, gens)
    ]
    batch = collate_rollouts(rollouts[:8], pad_id)
    loss = -module.policy_logps(batch).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def main() -> None:
    parser = rollout_parser(__doc__.splitlines()[0], repeats=1)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule
    from sppo_pl.rollout.base import SamplingConfig, request_seeds
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = prompts(tokenizer, args.prompts)
    sampling = SamplingConfig(n=args.k, temperature=0.7, top_p=1.0, max_tokens=args.max_tokens)
    module = SPPOModule(args.model, loss=SPPOLoss(), reference="engine")
    engine = VLLMEngine(args.model, max_model_len=512, use_tqdm=False)
    opt = torch.optim.AdamW(module.policy.parameters(), lr=1e-4)
    rows, gens = {}, []
    for stage in ("as loaded", f"after {args.steps} steps, synced"):
        if rows:
            for _ in range(args.steps):
                _step(module, gens, ids, tokenizer.pad_token_id, opt)
            engine.sync_weights(module.named_weights())
        start = time.perf_counter()
        gens = engine.generate(ids, sampling, request_seeds(0, len(rows), len(ids)), logprobs=True)
        rows[stage] = compare(module, gens, ids, tokenizer.pad_token_id) | {
            "generate_s": time.perf_counter() - start
        }
    result = run_info(model=args.model, prompts=args.prompts, k=args.k, max_tokens=args.max_tokens, rows=rows)
    lines = [
        f"# log pi_t: vLLM's sampled-token log-probs vs a pass of the policy ({result['date']}, {result['machine']})",
        "",
        f"`python -m bench.engine_logprobs --prompts {args.prompts} --k {args.k} --max-tokens {args.max_tokens}"
        f" --steps {args.steps}`, {args.model}, float32 engine and policy, T 0.7.",
        "",
        "| policy | responses | tokens | max abs diff per token (response's / its length) | median per token | max abs diff per response "
        "| precompute pass (s) | generate with log-probs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, r in rows.items():
        lines.append(
            f"| {stage} | {r['responses']} | {r['tokens']} | {r['max_abs_diff_per_token']:.2e} "
            f"| {r['median_abs_diff_per_token']:.2e} | {r['max_abs_diff_per_response']:.2e} "
            f"| {r['precompute_s']:.2f} | {r['generate_s']:.2f} |"
        )
    write_results("engine_logprobs", result, lines)


if __name__ == "__main__":
    main()
