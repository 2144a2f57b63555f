"""Resuming in place continues the run's history instead of starting a new one.

Each checkpoint records how many rows the run's CSV metrics held when it was written (the loggers are
flushed first). Resuming from it, :class:`sppo_pl.loggers.CSVLogger` keeps exactly those rows (the
iterations the checkpoint has finished, and the rollouts it carries), drops the rows of the unfinished
iteration that the resumed run trains again, and appends. Rollout files of earlier iterations stay where
they are; checkpoints go on under the same names (``last.ckpt`` is the newest: ModelCheckpoint's
``enable_version_counter: false`` in ``conf/callbacks/default.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from sppo_pl.loggers import CSVLogger, count_rows


class RunHistory(L.Callback):
    def state_dict(self) -> dict:
        rows = {}
        for logger in self._csv_loggers():
            logger.save()
            rows[logger.log_dir] = count_rows(Path(logger.log_dir) / "metrics.csv")
        return {"metrics_rows": rows}

    def load_state_dict(self, state: dict) -> None:
        """On resume (before anything is logged): how many rows of each CSV log belong to the run."""
        saved = state.get("metrics_rows", {})
        for logger in self._csv_loggers():
            # the same run directory, or a copy of it moved elsewhere: rows are per file position
            logger.keep_rows = saved.get(logger.log_dir, next(iter(saved.values()), None))

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer

    def _csv_loggers(self) -> list[CSVLogger]:
        trainer = getattr(self, "_trainer", None)
        return [lg for lg in (trainer.loggers if trainer else []) if isinstance(lg, CSVLogger)]
