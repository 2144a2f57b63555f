"""Per-iteration PNG plots in the run directory when training ends (what they show: :mod:`sppo_pl.plots`)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class PlotsCallback(L.Callback):
    """On rank 0 at the end of fitting: flush the loggers, then plot ``<save_dir>/metrics.csv`` into
    ``<save_dir>/<subdir>``."""

    def __init__(self, save_dir: str, subdir: str = "plots"):
        self.save_dir, self.subdir = Path(save_dir), subdir

    def on_fit_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        metrics = self.save_dir / "metrics.csv"
        if not metrics.exists():
            log.warning("plots: no %s (the csv logger is off), nothing plotted", metrics)
            return
        from sppo_pl.plots import plot_metrics

        files = plot_metrics(metrics, self.save_dir / self.subdir)
        log.info("plots: wrote %s", ", ".join(p.name for p in files))
