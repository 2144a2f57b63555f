"""The loggers get the run's whole config, and each W&B run ends with its job (sppo_pl.loggers)."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from sppo_pl.loggers import CSVLogger, finish_runs, log_config


def test_every_logger_gets_the_whole_resolved_config(tmp_path):
    """Lightning logs the module's arguments only: loss.eta, the lr and the data were missing."""
    logger = CSVLogger(save_dir=str(tmp_path), name="", version="")
    cfg = OmegaConf.create({"loss": {"eta": 10.0}, "optim": {"lr": "${loss.eta}"}, "task_name": "smoke"})
    log_config([logger], cfg)
    logger.save()
    saved = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert saved["loss"] == {"eta": 10.0} and saved["optim"] == {"lr": 10.0} and saved["task_name"] == "smoke"


def test_each_job_of_a_sweep_gets_a_wandb_run_of_its_own(tmp_path, monkeypatch):
    """Lightning leaves the W&B run open: the next job in the process logged into the first one's run."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for job in (0, 1):
        logger = WandbLogger(project="sppo-pl-test", save_dir=str(tmp_path / str(job)), offline=True)
        ids.append(logger.experiment.id)
        finish_runs([logger])
        assert wandb.run is None
    assert ids[0] != ids[1]
    finish_runs([CSVLogger(save_dir=str(tmp_path))])  # other loggers are left alone
