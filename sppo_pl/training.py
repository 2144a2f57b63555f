"""train(cfg): compose the run from a Hydra config and fit it. ``train.py`` is the command-line entry."""

from __future__ import annotations

import csv
import logging
import signal
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sppo_pl.checkpoint import (
    check_ckpt_model,
    last_checkpoint,
    refuse_earlier_run,
    requeued_ckpt,
    resolve_ckpt,
)
from sppo_pl.config import check_config, check_model_dir
from sppo_pl.loggers import finish_runs, log_config
from sppo_pl.report import markdown_table
from sppo_pl.rundir import hold_run_dir, save_job_record

log = logging.getLogger(__name__)


def build(
    cfg: DictConfig, ckpt: str | None = None
) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Instantiate everything in order; every config error is raised before a model is fetched or loads (the
    checks, and the callbacks, whose constructors check their settings, come first), and a checkpoint to
    resume, ``ckpt``, is checked to hold ``model.path``'s architecture."""
    loss = instantiate(cfg.loss)
    check_config(cfg, loss)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    prepare(cfg)
    check_model_dir(cfg)
    if ckpt is not None:
        check_ckpt_model(ckpt, cfg.model.path)
    L.seed_everything(cfg.seed, workers=True)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # reads and checks every prompt now, before the model loads
    datamodule.check_answers(cfg.reward)  # a verifier reward needs every prompt's answer
    reward = instantiate(cfg.reward)  # oracle models load on first use
    module = instantiate(
        cfg.module,
        loss=loss,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
    )
    callbacks += [instantiate(cfg.rollout, oracle=reward), reward]
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
    """Run the self-play iterations; returns ``cfg.optimized_metric`` at the end (for sweeps).

    The run directory is held for this run alone (:func:`sppo_pl.rundir.hold_run_dir`) and ``ckpt_path`` is
    checked before anything loads; without one, a SLURM requeue's checkpoint is resumed, and a directory that
    holds another run's checkpoints is refused. A run stopped by SIGTERM (a scheduler's pre-emption) exits 143
    after its last finished iteration's checkpoint, and says how to resume; nothing is exported then.
    """
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(out):
        ckpt = resolve_ckpt(cfg.get("ckpt_path")) or requeued_ckpt(out)
        if ckpt is None:
            refuse_earlier_run(out)
        save_job_record(out, cfg)
        (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        module, datamodule, trainer = build(cfg, ckpt)
        log_config(trainer.loggers, cfg)
        try:
            if cfg.get("validate_before_training") and not ckpt:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
            except SIGTERMException:
                raise SystemExit(_preempted(out, trainer)) from None
            if trainer.is_global_zero:
                _report(cfg, out, trainer)
        finally:
            finish_runs(trainer.loggers)
    metric = trainer.callback_metrics.get(cfg.get("optimized_metric") or "")
    return None if metric is None else float(metric)


def _preempted(out: Path, trainer: L.Trainer) -> int:
    """Say where a run stopped by SIGTERM can resume from; the exit status (128 + SIGTERM)."""
    ckpt = last_checkpoint(trainer)
    kept = f"its last finished iteration's checkpoint is {ckpt}" if ckpt else "no iteration had finished"
    done = trainer.fit_loop.epoch_progress.current.completed
    log.error(
        "stopped by SIGTERM at step %d, with %d of %s self-play iterations finished; %s. Resume in place "
        "with: python train.py <the same overrides> ckpt_path=%s hydra.run.dir=%s",
        trainer.global_step,
        done,
        trainer.max_epochs,
        kept,
        out,
        out,
    )
    return 128 + signal.SIGTERM


def _report(cfg: DictConfig, out: Path, trainer: L.Trainer) -> None:
    """Rank 0, after fitting: the validation table, and the final policy as a Hugging Face directory."""
    table = val_table(out / "metrics.csv")
    if table:
        print(format_table(table))
    last = Path(last_checkpoint(trainer) or out / "checkpoints" / "last.ckpt")
    if cfg.get("export_hf") and last.exists():
        from sppo_pl.export import export_hf

        log.info(
            "exported the final policy (%s) to %s",
            last.resolve().name,
            export_hf(last, out / "hf_model", cfg.model.path),
        )


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
    return markdown_table(
        "iteration", keys, ((int(r["val/iteration"]), [r.get(k) for k in keys]) for r in rows)
    )
