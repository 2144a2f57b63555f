"""Benchmark: does SPPO learn? SPPO vs iterative DPO vs the starting model, at the same rollout budget.

    python -m bench.learning [--seeds 0 1] [--losses sppo dpo] [--add] [-- extra train.py overrides]

Runs ``python train.py loss=<loss> seed=<seed>`` for each pair (the embedded CPU default: SmolLM2-135M-Instruct
on arithmetic, 3 iterations of 32 prompts x K = 4 samples, the same for every loss), one process each, and
collects ``val/acc`` per iteration (iteration 0 is the starting model). ``--add`` keeps the runs already in
``learning.json`` (other seeds, with the same overrides) and adds these to them. Results:
``bench/results/learning.{json,md,png}``. About 10 minutes a run on 2 CPU cores; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine, write_results
from sppo_pl.report import markdown_table
from sppo_pl.training import val_table

ROOT = Path(__file__).resolve().parent.parent


def previous_runs(extra: list[str]) -> list[dict]:
    """The runs in ``learning.json``, if they were made with the same ``train.py`` overrides."""
    path = RESULTS / "learning.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("overrides", []) != extra:
        raise ValueError(f"--add: {path} was made with overrides {old.get('overrides')}, not {extra}")
    return old["runs"]


def run_one(loss: str, seed: int, log_dir: Path, extra: list[str]) -> dict:
    """One training run; its val/acc per iteration and wall time."""
    task = f"learning_{loss}_seed{seed}"
    cmd = [sys.executable, "train.py", f"loss={loss}", f"seed={seed}", f"task_name={task}"]
    cmd += [f"paths.log_dir={log_dir}", "export_hf=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    (run,) = (log_dir / task / "runs").iterdir()
    rows = val_table(run / "metrics.csv")
    return {
        "loss": loss,
        "seed": seed,
        "wall_s": wall,
        "run_dir": str(run),
        "val_acc": [r["val/acc"] for r in rows],
        "val_win_rate": [r.get("val/win_rate") for r in rows],
    }


def summarise(runs: list[dict]) -> dict[str, list[float]]:
    """Mean val/acc per iteration for each loss over its seeds."""
    by_loss: dict[str, list[list[float]]] = {}
    for r in runs:
        by_loss.setdefault(r["loss"], []).append(r["val_acc"])
    return {loss: [statistics.mean(col) for col in zip(*accs)] for loss, accs in by_loss.items()}


def table(runs: list[dict], means: dict[str, list[float]]) -> str:
    cols = [f"{r['loss']} seed {r['seed']}" for r in runs] + [f"{loss} mean" for loss in means]
    rows = (
        (
            f"{it}{' (start)' if it == 0 else ''}",
            [r["val_acc"][it] for r in runs] + [m[it] for m in means.values()],
        )
        for it in range(len(runs[0]["val_acc"]))
    )
    return markdown_table("iteration", cols, rows)


def plot(runs: list[dict], means: dict[str, list[float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {}
    for loss, m in means.items():
        (line,) = ax.plot(range(len(m)), m, marker="o", linewidth=2, label=f"{loss} (mean)")
        colors[loss] = line.get_color()
    for r in runs:
        acc = r["val_acc"]
        ax.plot(range(len(acc)), acc, color=colors[r["loss"]], alpha=0.35, linewidth=1)
    ax.set_xticks(range(len(runs[0]["val_acc"])))
    ax.set_xlabel("self-play iteration (0 = start)")
    ax.set_ylabel("val/acc (greedy)")
    ax.set_title("SmolLM2-135M-Instruct, arithmetic: SPPO vs iterative DPO")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--losses", nargs="+", default=["sppo", "dpo"])
    parser.add_argument("--log-dir", default=str(ROOT / "outputs" / "bench"))
    parser.add_argument("--add", action="store_true", help="add to the runs already in learning.json")
    parser.add_argument("extra", nargs="*", help="train.py overrides for every run (after --)")
    args = parser.parse_args(argv)
    runs = previous_runs(args.extra) if args.add else []
    done = {(r["loss"], r["seed"]) for r in runs}
    runs += [
        run_one(loss, seed, Path(args.log_dir), args.extra)
        for seed in args.seeds
        for loss in args.losses
        if (loss, seed) not in done
    ]
    order = list(dict.fromkeys([*args.losses, *(r["loss"] for r in runs)]))
    runs.sort(key=lambda r: (order.index(r["loss"]), r["seed"]))
    means = summarise(runs)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "overrides": args.extra, "runs": runs}
    result["mean_val_acc"] = means
    write_results("learning", result, [f"# val/acc per iteration ({result['date']})", "", table(runs, means)])
    plot(runs, means, RESULTS / "learning.png")


if __name__ == "__main__":
    main()
