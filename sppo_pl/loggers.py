"""Lightning's CSV logger, made to continue a resumed run's ``metrics.csv`` instead of deleting it.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts (and warns whenever the folder is
not empty, which Hydra's own files always make it). Here the decision waits for the first write:

- resuming (:class:`callbacks.history.RunHistory` restored from the checkpoint how many rows the file held
  when that checkpoint was written): those rows are kept, the rows of the unfinished iteration after them
  are dropped, and new rows are appended;
- a fresh run in a folder that holds an earlier run's ``metrics.csv``: it is replaced, with a warning that
  says how to continue it instead. No warning otherwise.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_warn


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that keeps ``keep_rows`` rows of an existing metrics.csv."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_rows: int | None = None  # set when resuming: rows of metrics.csv that belong to the run

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self)
        return self._experiment


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, logger: CSVLogger):
        self._logger, self._started = logger, False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes metrics.csv here; whether to keep it is decided at the first save."""

    def save(self) -> None:
        if self.metrics and not self._started:
            self._started = True
            self.metrics_keys = continue_metrics(Path(self.metrics_file_path), self._logger.keep_rows)
        super().save()


def continue_metrics(path: Path, keep_rows: int | None) -> list[str]:
    """Keep the first ``keep_rows`` rows of ``path`` (and its header, returned), or remove the file when
    ``keep_rows`` is None (a fresh run), warning that an earlier run's metrics are replaced."""
    if not path.is_file():
        return []
    if keep_rows is None:
        rank_zero_warn(
            f"{path} holds an earlier run's metrics and is replaced. To continue that run instead, resume it "
            f"in place: ckpt_path={path.parent} hydra.run.dir={path.parent}"
        )
        path.unlink()
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(itertools.islice(reader, keep_rows))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return header


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (0 if it does not exist)."""
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def log_config(loggers, cfg) -> None:
    """The run's whole resolved config as every logger's hyper-parameters (``loss.eta``, the lr, the data, the
    reward...): Lightning logs only the module's constructor arguments, which leave them out."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)


def finish_runs(loggers) -> None:
    """End the W&B run of each ``WandbLogger`` (Lightning leaves it open): the next job of a sweep, in the same
    process, then starts a run of its own instead of logging into this one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
