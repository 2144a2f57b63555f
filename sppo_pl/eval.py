"""Evaluate a trained policy on a dataset's test split, with vLLM, under any oracle.

python -m sppo_pl.eval policy=outputs/train/runs/<run>          # a run directory (its hf_model or last.ckpt)
python -m sppo_pl.eval policy=<run>/checkpoints/last.ckpt        # a checkpoint: file or sharded folder
python -m sppo_pl.eval policy=/models/my-model start_model=/models/base   # any Hugging Face directory
python -m sppo_pl.eval                                           # the starting model alone
python -m sppo_pl.eval experiment=smoke policy=...               # every train option (data=, reward=, ...)

For the policy and the model it started from it reports greedy accuracy (``acc``; ``reward_mean`` for a
scoring oracle), ``mean@n`` and ``pass@k`` over ``eval.samples`` sampled responses per prompt, and the
policy's ``win_rate`` against the starting model's greedy responses under the run's oracle (``reward=``).
Both models run in one engine: the starting model's weights first, then the policy's streamed in place.
Results go to the run directory: ``eval.json``, ``eval.md`` (the table) and ``responses.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import sppo_pl.config  # noqa: F401  (registers the resolvers the configs use)
from sppo_pl.metrics import greedy_metrics, sample_metrics
from sppo_pl.report import markdown_table, write_jsonl_atomic
from sppo_pl.rewards.oracle import oracle_from_config
from sppo_pl.rollout.base import SamplingConfig, check_sampling, is_whole, request_seeds

log = logging.getLogger(__name__)
RUN_CONFIG = "config_resolved.yaml"
ARCH_KEYS = ("architectures", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")


@dataclass
class Policy:
    """What to evaluate: a Hugging Face directory or a Lightning checkpoint, and the model it started from."""

    path: Path
    is_checkpoint: bool
    start_model: str | None
    run_dir: Path | None = None  # the training run it came from (its config_resolved.yaml), if any

    def weights(self, dtype: str) -> torch.nn.Module:
        from sppo_pl.export import load_policy_from_checkpoint
        from sppo_pl.module import load_policy

        if self.is_checkpoint:  # the architecture of the model it started from
            return load_policy_from_checkpoint(self.path, self.start_model).to(getattr(torch, dtype))
        return load_policy(str(self.path), dtype)


def resolve_policy(path: str, start: str | None = None) -> Policy:
    """``policy=``: a Hugging Face directory, a run directory (its ``hf_model``, else its last checkpoint), or
    a checkpoint (a file, or a sharded folder). A checkpoint's start model, whose architecture its weights
    load into, is ``start`` (``start_model=``) when given, else the path it recorded."""
    from sppo_pl.checkpoint import resolve_ckpt
    from sppo_pl.export import checkpoint_model_path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"policy={path} does not exist")
    hf = p if (p / "config.json").exists() else p / "hf_model"
    if (hf / "config.json").exists():
        run = run_dir_of(p)
        return Policy(hf, False, run_start_model(run), run)
    if p.is_dir() and not (p / "checkpoints").is_dir() and not (p / "meta.pt").exists():
        raise FileNotFoundError(
            f"policy={path} is neither a Hugging Face model directory (config.json), a run directory "
            "(hf_model/ or checkpoints/) nor a checkpoint"
        )
    ckpt = Path(resolve_ckpt(path))  # a run directory's last.ckpt, else its newest intact checkpoint
    start = str(start) if start else checkpoint_model_path(ckpt)
    return Policy(ckpt, True, start, run_dir_of(ckpt))


def run_dir_of(path: Path) -> Path | None:
    """The training run a policy comes from: ``path`` itself, its parent (``<run>/hf_model``) or grandparent
    (``<run>/checkpoints/last.ckpt``), whichever holds a ``config_resolved.yaml``; None for none."""
    return next((d for d in (path, path.parent, path.parent.parent) if (d / RUN_CONFIG).exists()), None)


def start_model(cfg: DictConfig, policy: Policy | None) -> tuple[str | None, bool]:
    """The start model (compared with the policy, or evaluated alone without one) and whether it is
    ``model.path``: ``start_model=``, else the policy's own (its run's or checkpoint's), else ``model.path``
    (with a warning when a policy records none); None when the policy is evaluated without a comparison."""
    start = cfg.get("start_model") or (policy.start_model if policy else None)
    if start is not None or (policy is not None and not cfg.eval.compare_to_start):
        return start, False
    if policy is not None:
        log.warning("eval: policy=%s records no start model; comparing it with model.path", policy.path)
    return str(cfg.model.path), True


def run_start_model(run_dir: Path | None) -> str | None:
    """The ``model.path`` a training run started from, read from its ``config_resolved.yaml``."""
    if run_dir is None or not (run_dir / RUN_CONFIG).exists():
        return None
    return OmegaConf.select(OmegaConf.load(run_dir / RUN_CONFIG), "model.path")


def check_run_data(data: DictConfig, run_dir: Path | None) -> None:
    """The test split evaluated must be the one the run held out from its training. A run whose
    ``data.dataset`` has the same loader but other settings (another split seed, size or file) is refused,
    each differing key named with the run's value: its test rows could be prompts it trained on."""
    if run_dir is None:
        return
    theirs = OmegaConf.select(OmegaConf.load(run_dir / RUN_CONFIG), "data.dataset")
    ours = OmegaConf.to_container(data.dataset, resolve=True) if "dataset" in data else None
    if theirs is None or ours is None:
        return
    theirs = OmegaConf.to_container(theirs)
    if theirs.get("_target_") != ours.get("_target_"):
        return  # another dataset: nothing of it was trained on
    differ = {k: theirs.get(k) for k in sorted(theirs.keys() | ours.keys()) if theirs.get(k) != ours.get(k)}
    if differ:
        given = {k: ours.get(k) for k in differ}
        fix = " ".join(f"data.dataset.{k}={override_value(v)}" for k, v in differ.items())
        raise ValueError(
            f"the run {run_dir} held out its test split with data.dataset {differ}, but this evaluation "
            f"has {given}: its test rows could be prompts the policy trained on; evaluate with {fix}"
        )


def override_value(v) -> str:
    """A value as a Hydra command-line override writes it: strings bare, the rest as JSON (null, [1,2])."""
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def check_same_architecture(start: str, policy: str) -> None:
    """The policy's weights stream into an engine built from ``start``: their shapes must agree."""
    a, b = (json.loads((Path(p) / "config.json").read_text()) for p in (start, policy))
    differ = [k for k in ARCH_KEYS if a.get(k) != b.get(k)]
    if differ:
        raise ValueError(
            f"start_model {start} and policy {policy} differ in {differ}: the win rate runs both in one "
            "engine; give the policy's own start_model=, or eval.compare_to_start=false"
        )


def check_eval_sampling(ev: DictConfig) -> None:
    """``eval.samples`` a whole number >= 0, and the sampling settings (``eval.temperature``, ``eval.top_p``,
    ``eval.max_tokens``) usable, each named: checked before any model loads or generates."""
    if not is_whole(ev.samples) or ev.samples < 0:
        raise ValueError(f"eval.samples must be a whole number >= 0 (0: greedy only), got {ev.samples!r}")
    check_sampling(max(1, ev.samples), ev.temperature, ev.top_p, ev.max_tokens, key="eval", n_key="samples")


def check_pass_at(pass_at: list[int] | None, samples: int) -> list[int]:
    """``eval.pass_at`` (default ``[eval.samples]``; one k or a list): each k a whole number within 1..samples."""
    if is_whole(pass_at):
        pass_at = [pass_at]
    ks = [samples] if pass_at is None and samples else pass_at or []
    if isinstance(ks, str | bool) or not all(is_whole(k) for k in ks):
        raise ValueError(f"eval.pass_at must be null, a whole number or a list of them, got {pass_at!r}")
    ks = list(ks)
    bad = [k for k in ks if not 1 <= k <= samples]
    if bad:
        raise ValueError(f"eval.pass_at {bad} must lie in 1..eval.samples ({samples})")
    return ks


def check_pass_at_oracle(pass_at, oracle) -> None:
    """An explicit ``eval.pass_at`` needs a verifier (``is_verifier``: 0/1 correctness scores): pass@k counts
    correct samples, and any other oracle's samples get ``reward_mean@n`` instead. Refused, not dropped."""
    if pass_at is not None and not oracle.is_verifier:
        name = f"{type(oracle).__module__}.{type(oracle).__qualname__}"
        raise ValueError(
            f"eval.pass_at={pass_at} needs a verifier reward (0/1 correctness: reward=math, gsm8k or arithmetic), "
            f"but {name} scores responses without checking an answer (its samples get reward_mean@n); leave "
            "eval.pass_at null"
        )


def row_fields(prompts: list[dict], names: list[str], repeat: int = 1) -> dict[str, list]:
    """The dataset fields (``answer`` and ``data.fields``) of each prompt, each repeated ``repeat`` times."""
    return {k: [p[k] for p in prompts for _ in range(repeat)] for k in ["answer", *names]}


def generate(engine, prompts: list[dict], ev: DictConfig, seed: int) -> dict:
    """Greedy responses and ``ev.samples`` sampled responses per prompt (seeded per prompt)."""
    ids = [p["prompt_ids"] for p in prompts]
    greedy = engine.generate(ids, SamplingConfig(1, 0.0, 1.0, ev.max_tokens))
    out = {"greedy": [g.texts[0] for g in greedy], "samples": None}
    if ev.samples:
        sampling = SamplingConfig(ev.samples, ev.temperature, ev.top_p, ev.max_tokens)
        out["samples"] = [g.texts for g in engine.generate(ids, sampling, request_seeds(seed, 0, len(ids)))]
    return out


def model_metrics(oracle, prompts: list[dict], names: list[str], gen: dict, pass_at: list[int]) -> dict:
    """Greedy and sampled metrics of one model's responses (none for an oracle without scores)."""
    if not oracle.has_scores:
        return {}
    texts = [p["prompt"] for p in prompts]
    scores = oracle.checked_score(texts, gen["greedy"], **row_fields(prompts, names))
    gen["greedy_scores"] = scores
    out = greedy_metrics(scores, oracle.is_verifier)
    if gen["samples"]:
        n = len(gen["samples"][0])
        flat = oracle.checked_score(
            [x for x in texts for _ in range(n)],
            [y for ys in gen["samples"] for y in ys],
            **row_fields(prompts, names, repeat=n),
        )
        grid = torch.tensor(flat, dtype=torch.float64).view(len(prompts), n)
        gen["sample_scores"] = grid.tolist()
        out |= sample_metrics(grid, oracle.is_verifier, pass_at)
    return out


def evaluate(cfg: DictConfig) -> dict:
    """Generate, score and write ``eval.json``, ``eval.md`` and ``responses.jsonl``; returns the results."""
    from sppo_pl.training import prepare

    ev, out = cfg.eval, Path(cfg.paths.output_dir)
    check_eval_sampling(ev)
    pass_at = check_pass_at(ev.pass_at, ev.samples)
    out.mkdir(parents=True, exist_ok=True)
    policy = resolve_policy(cfg.policy, cfg.get("start_model")) if cfg.get("policy") else None
    start, from_model_path = start_model(cfg, policy)
    check_run_data(cfg.data, policy and policy.run_dir)
    prepare(cfg, model=from_model_path)  # model.prepare only when model.path is evaluated
    oracle = oracle_from_config(cfg.reward)  # the oracle alone: no Lightning callback
    check_pass_at_oracle(ev.pass_at, oracle)
    oracle.place("cuda" if torch.cuda.is_available() else "cpu")
    compare = bool(policy and start and ev.compare_to_start)
    base = engine_base(policy, start, compare)
    prompts, names = eval_prompts(cfg, base)
    gens = generate_all(cfg, instantiate(ev.engine)(base), prompts, policy, base, compare)
    write_responses(out / "responses.jsonl", prompts, names, gens)  # before scoring: nothing is lost
    metrics = {role: model_metrics(oracle, prompts, names, g, pass_at) for role, g in gens.items()}
    if compare:
        texts, fields = [p["prompt"] for p in prompts], row_fields(prompts, names)
        wins = oracle.compare(texts, gens["policy"]["greedy"], gens["start"]["greedy"], **fields)
        metrics["policy"]["win_rate"] = sum(wins) / len(wins)
    write_responses(out / "responses.jsonl", prompts, names, gens)
    paths = {"start": start if "start" in gens else None, "policy": policy and str(policy.path)}
    results = {
        **paths,
        "reward": f"{type(oracle).__module__}.{type(oracle).__qualname__}",
        "data": OmegaConf.to_container(cfg.data.dataset, resolve=True) if "dataset" in cfg.data else None,
        "n_prompts": len(prompts),
        "samples": ev.samples,
        "metrics": metrics,
    }
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_eval_table(metrics, paths)
    (out / "eval.md").write_text(table + "\n")
    print(table)
    log.info("evaluation written to %s", out)
    return results


def eval_prompts(cfg: DictConfig, tokenizer_path: str) -> tuple[list[dict], list[str]]:
    """The test split's prompts, tokenized as training validates them (``data.max_val_prompts`` of them),
    and the names of the fields handed to the oracle."""
    from transformers import AutoTokenizer

    dm = instantiate(cfg.data, tokenizer=AutoTokenizer.from_pretrained(tokenizer_path))
    dm.setup("validate")
    dm.check_answers(cfg.reward)  # a verifier needs every prompt's answer: said now, not at scoring
    return dm.val_prompts, dm.fields


def generate_all(cfg, engine, prompts: list[dict], policy: Policy | None, base: str, compare: bool) -> dict:
    """Each model's responses: the start model's first (as loaded), then the policy's weights streamed in
    (unless the engine loaded the policy's own directory)."""
    from sppo_pl.distributed import full_named_weights

    gens = {}
    if compare or policy is None:
        gens["start"] = generate(engine, prompts, cfg.eval, cfg.seed)
    if policy is not None:
        if base != str(policy.path):
            engine.sync_weights(full_named_weights(policy.weights(cfg.model.dtype)))
        gens["policy"] = generate(engine, prompts, cfg.eval, cfg.seed)
    return gens


def engine_base(policy: Policy | None, start: str | None, compare: bool) -> str:
    """The model directory the engine loads: the start model when it runs too (the policy's weights then
    stream in), else the policy's directory, or for a checkpoint the model it was trained from."""
    if policy is None:
        return start
    if compare:
        check_same_architecture(start, policy.start_model if policy.is_checkpoint else str(policy.path))
        return start
    return policy.start_model if policy.is_checkpoint else str(policy.path)


def write_responses(path: Path, prompts: list[dict], names: list[str], gens: dict) -> None:
    """One line per prompt: the prompt, its answer and fields, and each model's responses (and scores)."""
    rows = (
        {"prompt": p["prompt"], "answer": p["answer"], **{k: p[k] for k in names}}
        | {role: {k: v[i] for k, v in g.items() if v is not None} for role, g in gens.items()}
        for i, p in enumerate(prompts)
    )
    write_jsonl_atomic(path, rows)


def format_eval_table(metrics: dict[str, dict], paths: dict[str, str | None]) -> str:
    """A markdown table: one row per model (start, policy), one column per metric."""
    keys = list(dict.fromkeys(k for m in metrics.values() for k in m))
    rows = ((f"{role} ({paths.get(role)})", [m.get(k) for k in keys]) for role, m in metrics.items())
    return markdown_table("model", keys, rows)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    results = evaluate(cfg)
    row = results["metrics"].get("policy") or results["metrics"].get("start") or {}
    return next(iter(row.values()), None)


if __name__ == "__main__":
    main()
