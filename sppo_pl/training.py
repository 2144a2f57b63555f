"""train(cfg): compose the run from a Hydra config and fit it. ``train.py`` is the command-line entry."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sppo_pl.config import check_loss, check_model_dir, check_runtime

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate everything in order; every config error is raised before a model loads."""
    loss = instantiate(cfg.loss)
    check_loss(cfg, loss)
    check_runtime(cfg)
    prepare(cfg)
    check_model_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # reads and checks every prompt now, before the model loads
    module = instantiate(
        cfg.module,
        loss=loss,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [instantiate(cfg.rollout), instantiate(cfg.reward)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, datamodule, trainer


def prepare(cfg: DictConfig, model: bool = True) -> None:
    """Fetch or build what the run reads before anything loads: ``model.prepare`` (unless ``model=False``),
    then each ``prepare.*`` step in order (a reward model to fetch, a local dataset copy to write, ...)."""
    steps = [cfg.model.get("prepare") if model else None, *(cfg.get("prepare") or {}).values()]
    for step in steps:
        if step is not None:
            instantiate(step)


def train(cfg: DictConfig) -> float | None:
    """Run the self-play iterations; returns ``cfg.optimized_metric`` at the end (for sweeps)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module, datamodule, trainer = build(cfg)
    if cfg.get("validate_before_training") and not cfg.get("ckpt_path"):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt(cfg.get("ckpt_path")))
    if trainer.is_global_zero:
        _report(cfg, out, trainer)
    metric = trainer.callback_metrics.get(cfg.get("optimized_metric") or "")
    return None if metric is None else float(metric)


def _report(cfg: DictConfig, out: Path, trainer: L.Trainer) -> None:
    """Rank 0, after fitting: the validation table, and the final policy as a Hugging Face directory."""
    table = val_table(out / "metrics.csv")
    if table:
        print(format_table(table))
    last = out / "checkpoints" / "last.ckpt"
    if cfg.get("export_hf") and last.exists():
        from sppo_pl.export import export_hf

        log.info("exported the final policy to %s", export_hf(last, out / "hf_model", cfg.model.path))


def resolve_ckpt(path: str | None) -> str | None:
    """``ckpt_path``: a checkpoint (file, or sharded folder), or a run directory (its last checkpoint)."""
    if path is None:
        return None
    p = Path(path)
    if (p / "checkpoints" / "last.ckpt").exists():
        return str(p / "checkpoints" / "last.ckpt")
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path does not exist: {path}")
    if p.is_dir() and not (p / "meta.pt").exists():
        raise FileNotFoundError(
            f"ckpt_path {path} is a folder with neither checkpoints/last.ckpt nor meta.pt"
        )
    return str(p)


def val_table(metrics_csv: Path) -> list[dict]:
    """Rows of metrics.csv that carry validation results, one per self-play iteration (0 = before training)."""
    if not metrics_csv.exists():
        return []
    rows = []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("val/iteration"):
                rows.append({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    return rows


def format_table(rows: list[dict]) -> str:
    keys = [k for k in ("val/acc", "val/reward_mean", "val/win_rate") if any(k in r for r in rows)]
    lines = ["| iteration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        vals = " | ".join(f"{r[k]:.4f}" if k in r else "" for k in keys)
        lines.append(f"| {int(r['val/iteration'])} | {vals} |")
    return "\n".join(lines)
