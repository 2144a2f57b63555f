"""Benchmark: one self-play iteration of the default run, broken down by where its wall time goes.

    python -m bench.iteration [-- extra train.py overrides]

Runs ``python train.py trainer.max_epochs=2`` (the embedded CPU default) with a timing callback, and breaks
down the wall time from iteration 0's first training batch to iteration 1's: training (the
optimizer steps), validation (greedy generation and scoring, without the weight sync it starts with), and
the rollout for the next iteration, which the rollout callback times itself (``rollout/gen_s``,
``rollout/score_s``, ``rollout/ref_logps_s``, ``rollout/sync_s``), and checkpointing (``trainer.save_checkpoint``,
timed). The rest is bookkeeping: saving the rollouts, gathering, logging, rebuilding the dataloader. Results:
``bench/results/iteration.{json,md}``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

from bench.common import ROOT, machine, write_results

PARTS = ("train", "val", "gen", "score", "ref_logps", "sync", "checkpoint")


class IterationTimer(L.Callback):
    """Records, per epoch, when its first training batch started, the seconds spent in training batches and
    in validation.

    The start is the first batch's, not ``on_train_epoch_start``: this callback runs before the rollout
    callback's ``on_train_epoch_start``, which makes the epoch's rollouts, so an epoch-start mark put the
    iteration's own rollouts in the window, and the breakdown subtracted the next iteration's instead (with
    dynamic sampling their generation times differ: 74 s against 46 s, which showed as 28-32 s of
    bookkeeping)."""

    def __init__(self, out: str):
        self.out, self.rows = Path(out), []
        self._t = 0.0

    def _row(self, trainer) -> dict:
        while len(self.rows) <= trainer.current_epoch:
            self.rows.append({"start": None, "train_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0})
        return self.rows[trainer.current_epoch]

    def on_train_start(self, trainer, pl_module):
        save = trainer.save_checkpoint

        def timed_save(*args, **kwargs):  # the checkpoint callback saves through the trainer
            start = time.perf_counter()
            save(*args, **kwargs)
            self._row(trainer)["checkpoint_s"] += time.perf_counter() - start

        trainer.save_checkpoint = timed_save

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()
        row = self._row(trainer)
        if row["start"] is None:
            row["start"] = self._t

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._row(trainer)["train_s"] += time.perf_counter() - self._t

    def on_validation_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "fit":
            self._row(trainer)["val_s"] += time.perf_counter() - self._t

    def on_train_end(self, trainer, pl_module):
        self.out.write_text(json.dumps(self.rows))


def breakdown(timer: list[dict], metrics: list[dict]) -> dict[str, float]:
    """Seconds per part of iteration 0 (start of epoch 0 to start of epoch 1) and the bookkeeping rest."""
    wall = timer[1]["start"] - timer[0]["start"]
    rollout = next(r for r in metrics if r.get("rollout/iteration") and float(r["rollout/iteration"]) == 1.0)
    sync = float(rollout["rollout/sync_s"])  # done before validation, reused by the rollout
    parts = {
        "train": timer[0]["train_s"],
        "val": timer[0]["val_s"] - sync,
        "gen": float(rollout["rollout/gen_s"]),
        "score": float(rollout["rollout/score_s"]),
        "ref_logps": float(rollout["rollout/ref_logps_s"]),
        "sync": sync,
        "checkpoint": timer[0]["checkpoint_s"],
    }
    parts["bookkeeping"] = wall - sum(parts.values())
    parts["wall"] = wall
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", default=str(ROOT / "outputs" / "bench"))
    parser.add_argument("extra", nargs="*", help="train.py overrides (after --)")
    args = parser.parse_args(argv)
    record = Path(args.log_dir) / "iteration_timer.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "train.py",
        "trainer.max_epochs=2",
        "task_name=bench_iteration",
        f"paths.log_dir={args.log_dir}",
        "export_hf=false",
        "+callbacks.timer._target_=bench.iteration.IterationTimer",
        f"+callbacks.timer.out={record}",
        *args.extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    run = max((Path(args.log_dir) / "bench_iteration" / "runs").iterdir())
    with (run / "metrics.csv").open() as f:
        parts = breakdown(json.loads(record.read_text()), list(csv.DictReader(f)))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "overrides": args.extra,
        "seconds": parts,
    }
    lines = [
        f"# One self-play iteration of the default run ({result['date']}), {parts['wall']:.1f} s",
        "",
        "| part | seconds | share |",
        "|---|---|---|",
    ]
    for name in (*PARTS, "bookkeeping"):
        lines.append(f"| {name} | {parts[name]:.2f} | {parts[name] / parts['wall']:.1%} |")
    share = (parts["sync"] + parts["bookkeeping"]) / parts["wall"]
    with_ckpt = (parts["sync"] + parts["bookkeeping"] + parts["checkpoint"]) / parts["wall"]
    lines += ["", f"sync + bookkeeping: {share:.1%} of the iteration ({with_ckpt:.1%} with checkpointing)"]
    write_results("iteration", result, lines)


if __name__ == "__main__":
    main()
