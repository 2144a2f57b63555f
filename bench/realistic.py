"""Benchmark at realistic sizes (Qwen2.5-0.5B / 1.5B architectures, random weights) on a GPU: rollout, weight
sync and one self-play iteration's peak GPU memory with and without the engine's sleep mode.

    python -m bench.realistic --size 1.5b [--out bench/results/gpu] [--prompts 64] [--k 4] [--max-tokens 256]
    python -m bench.realistic --size tiny --device cpu       (a dry run of the same code on CPU)

Weights cannot travel to the GPU machine, so the model is built from the architecture's published config
(``QWEN25``) with random weights, beside the tiny model's byte-level BPE tokenizer padded to its whole
vocabulary (``padded_tokenizer``); timings and memory do not depend on the values. In one process, with sppo-pl's own pieces (``SPPOModule``,
``VLLMEngine`` created with sleep mode, ``HFEngine``):

1. rollout: ``--prompts`` prompts of ``--prompt-len`` tokens x K samples of ``--max-tokens`` tokens at T = 1,
   vLLM (bf16, the default compiled engine) vs Hugging Face ``generate`` on a bf16 copy of the policy, one
   batch, each timed by ``bench.rollout.timed`` (per-prompt seeds, a warm-up, median tokens/s);
2. weight sync (``VLLMEngine.sync_weights`` of the fp32 policy's stream) vs a plain device-to-device copy
   of the same tensors into bf16 buffers of the same shapes;
3. one self-play iteration per sleep level 0, 1, 2 (wake the weights, sync, wake the KV cache, generate,
   sleep; pi_t log-probs; SPPO steps with AdamW in bf16 autocast on the generated rollouts), its peak GPU
   memory read with ``torch.cuda.mem_get_info`` by a sampling thread (vLLM allocates outside PyTorch's
   counters), per phase.

Writes ``<out>/realistic_<size>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.common import run_info, timed_seconds

# Qwen2.5's published configs (the hub's config.json of Qwen/Qwen2.5-0.5B-Instruct and -1.5B-Instruct)
QWEN25 = {
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
    },
    "1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
    },
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
}
VOCAB = 151936
GiB = 1024**3


def padded_tokenizer(vocab_size: int):
    """The tiny model's byte-level BPE tokenizer (ChatML specials), its vocabulary padded with never-merged
    entries up to ``vocab_size`` so that every id of the model decodes. (transformers builds a Qwen2
    directory's tokenizer as Qwen2's byte-level BPE from this vocabulary and these merges.)"""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from sppo_pl.utils.tiny_model import CHATML, build_tokenizer

    base = build_tokenizer()
    data = json.loads(base.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(base), vocab_size):
        vocab[f"<unused_{i}>"] = i
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        chat_template=CHATML,
    )


def build_model(size: str, out: Path, device: str) -> Path:
    """A random Qwen2.5-``size`` architecture (bf16 weights) and its tokenizer in ``out`` (built once)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    if (out / "config.json").exists():
        return out
    vocab = VOCAB if size != "tiny" else 1024
    tok = padded_tokenizer(vocab)
    config = Qwen2Config(
        vocab_size=vocab,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        **QWEN25[size],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return out


class PeakMemory:
    """Device memory in use (total - free, from ``cudaMemGetInfo``: every allocator counts), sampled by a
    thread every ``interval`` seconds; ``phase(name)`` records each phase's peak."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peaks, self._now = interval, {}, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def used() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.used()
            with self._lock:
                self._now = max(self._now, used)
            time.sleep(self.interval)

    @contextmanager
    def phase(self, name: str):
        torch.cuda.synchronize()
        with self._lock:
            self._now = self.used()
        yield
        torch.cuda.synchronize()
        with self._lock:
            self.peaks[name] = max(self._now, self.used())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g).tolist()  # no special token (ids 0-2)


def rollouts_from(prompts: list[list[int]], gens) -> list:
    from sppo_pl.types import Rollout

    k = len(gens[0].token_ids)
    return [
        Rollout("", p, g.texts, g.token_ids, scores=[0.0] * k, p_hat=torch.linspace(0, 1, k).tolist())
        for p, g in zip(prompts, gens)
    ]


def train_steps(module, opt, rollouts: list, pad_id: int, micro: int, device: str) -> int:
    """SPPO steps over ``rollouts`` in micro-batches of ``micro`` prompts (bf16 autocast on a GPU); tokens."""
    from sppo_pl.datamodule import collate_rollouts

    tokens = 0
    for s in range(0, len(rollouts), micro):
        batch = {k: v.to(device) for k, v in collate_rollouts(rollouts[s : s + micro], pad_id).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device != "cpu"):
            logps = module.policy_logps(batch)
            loss = module.loss_fn(logps, batch["ref_logps"], batch["p_hat"], batch["scores"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return tokens


def sync_vs_copy(engine, module, device: str, repeats: int) -> dict:
    """Median seconds of a weight sync vs a plain copy of the same tensors into same-shape bf16 buffers."""
    buffers = {n: torch.empty_like(t, dtype=torch.bfloat16) for n, t in module.named_weights()}

    def copy() -> None:
        for n, t in module.named_weights():
            buffers[n].copy_(t)

    def sync_device() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    sync = timed_seconds(lambda: engine.sync_weights(module.named_weights()), repeats, 1, sync_device)
    plain = timed_seconds(lambda: (copy(), sync_device()), repeats, 1, sync_device)
    gib = sum(b.numel() * b.element_size() for b in buffers.values()) / GiB
    return {
        "sync_s": sync,
        "copy_s": plain,
        "bf16_gib": gib,
        "ratio": statistics.median(sync) / statistics.median(plain),
    }


def rollout_speed(engine, hf, prompts, sampling, repeats: int) -> dict:
    """vLLM vs HF generate on the same prompts and sampling (``bench.rollout.timed`` for each)."""
    from bench.rollout import timed

    out = {
        name: timed(eng, prompts, sampling, repeats) for name, eng in (("vllm", engine), ("hf_generate", hf))
    }
    out["vllm_over_hf"] = out["vllm"]["tokens_per_s"] / out["hf_generate"]["tokens_per_s"]
    return out


def iteration_memory(
    engine, module, opt, prompts, sampling, pad_id: int, micro: int, train_prompts: int
) -> dict:
    """One self-play iteration per sleep level: the peak device memory of each phase, and its seconds."""
    out = {}
    mem = PeakMemory()
    try:
        for level in (0, 1, 2):
            engine.sleep_level = level
            start = time.perf_counter()
            with mem.phase(f"{level}/rollout"):
                engine.wake_up(["weights"])
                engine.sync_weights(module.named_weights())
                engine.wake_up(["kv_cache"])
                gens = engine.generate(prompts, sampling)
                engine.sleep()
            rollouts = rollouts_from(prompts, gens)
            with mem.phase(f"{level}/ref_logps"):
                module.compute_ref_logps(rollouts, pad_id)
            with mem.phase(f"{level}/train"):
                tokens = train_steps(module, opt, rollouts[:train_prompts], pad_id, micro, "cuda")
            phases = {p: mem.peaks[f"{level}/{p}"] / GiB for p in ("rollout", "ref_logps", "train")}
            out[level] = {
                "peak_gib": max(phases.values()),
                "phase_peak_gib": phases,
                "seconds": time.perf_counter() - start,
                "train_tokens": tokens,
            }
            print("iteration", level, json.dumps(out[level]), flush=True)
    finally:
        mem.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(QWEN25), default="1.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="/tmp/sppo-models")
    parser.add_argument("--out", default="bench/results/gpu")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--micro", type=int, default=4, help="prompts per training micro-batch (x K rows)")
    parser.add_argument("--train-prompts", type=int, default=16, help="prompts trained on per iteration")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--memory-only", action="store_true", help="only the per-sleep-level iterations")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from sppo_pl.losses import SPPOLoss
    from sppo_pl.module import SPPOModule, load_policy
    from sppo_pl.rollout.base import SamplingConfig
    from sppo_pl.rollout.hf_engine import HFEngine
    from sppo_pl.rollout.vllm_engine import VLLMEngine

    on_gpu = args.device != "cpu"
    path = build_model(args.size, Path(args.models) / f"qwen2.5-{args.size}-random", args.device)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    base = PeakMemory.used() if on_gpu else 0
    module = SPPOModule(str(path), loss=SPPOLoss(eta=1e3), attn_implementation="sdpa").to(args.device)
    opt = torch.optim.AdamW(module.policy.parameters(), lr=1e-7)
    engine = VLLMEngine(
        str(path),
        dtype="bfloat16" if on_gpu else "float32",
        max_model_len=args.prompt_len + args.max_tokens + 8,
        gpu_memory_utilization=args.gpu_memory_utilization,
        sleep_level=1 if on_gpu else 0,
        use_tqdm=False,
    )
    prompts = random_prompts(args.prompts, args.prompt_len, len(tok))
    sampling = SamplingConfig(n=args.k, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    result = run_info(size=args.size, model=QWEN25[args.size], prompts=args.prompts, k=args.k)
    result["parameters"] = sum(p.numel() for p in module.policy.parameters())
    if not args.memory_only:
        hf_policy = load_policy(str(path), "bfloat16" if on_gpu else "float32").to(args.device)
        result["rollout"] = rollout_speed(
            engine, HFEngine(hf_policy, tok, args.prompts), prompts, sampling, args.repeats
        )
        print("rollout", json.dumps(result["rollout"]), flush=True)
        del hf_policy
        result["sync"] = sync_vs_copy(engine, module, args.device, args.repeats + 1)
        print("sync", json.dumps(result["sync"]), flush=True)
    if on_gpu:
        torch.cuda.empty_cache()
        result["memory_before_gib"] = base / GiB
        result["iteration"] = iteration_memory(
            engine, module, opt, prompts, sampling, tok.pad_token_id, args.micro, args.train_prompts
        )
    write(Path(args.out), result)


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"realistic_{result['size']}" + ("" if "rollout" in result else "_memory")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Qwen2.5-{result['size']} architecture, random weights ({result['date']}, {result['machine']})"
    ]
    if "rollout" in result:
        r, s = result["rollout"], result["sync"]
        lines += [
            "",
            f"Rollout, {result['prompts']} prompts x K = {result['k']}: vLLM {r['vllm']['tokens_per_s']:.0f} "
            f"tokens/s, HF generate {r['hf_generate']['tokens_per_s']:.0f} tokens/s: **{r['vllm_over_hf']:.1f}x**",
            "",
            f"Weight sync {statistics.median(s['sync_s']):.3f} s vs plain copy {statistics.median(s['copy_s']):.3f} s "
            f"({s['bf16_gib']:.2f} GiB in bf16): **{s['ratio']:.2f}x**",
        ]
    if "iteration" in result:
        lines += [
            "",
            "| sleep level | peak GiB | rollout | pi_t log-probs | train | iteration s |",
            "|---|---|---|---|---|---|",
        ]
        for level, it in result["iteration"].items():
            p = it["phase_peak_gib"]
            lines.append(
                f"| {level} | **{it['peak_gib']:.1f}** | {p['rollout']:.1f} | {p['ref_logps']:.1f} | "
                f"{p['train']:.1f} | {it['seconds']:.1f} |"
            )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
