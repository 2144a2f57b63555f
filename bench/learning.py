"""Benchmark: does SPPO learn? SPPO vs iterative DPO vs the starting model, at the same rollout budget.

    python -m bench.learning [--seeds 0 1] [--losses sppo dpo] [--add] [--name NAME] [-- train.py overrides]

Runs ``python train.py loss=<loss> seed=<seed>`` for each pair (the embedded CPU default: SmolLM2-135M-Instruct
on 1-2 digit arithmetic, 3 iterations of 32 prompts x K = 4 samples with dynamic sampling, the same rollout
settings for every loss), one process each, and collects ``val/acc`` per iteration (iteration 0 is the starting
model). It reports, per loss, the mean gain and how many runs rose at every iteration, and the per-seed
difference of the final ``val/acc``, SPPO minus DPO (same seed: same start and first prompts), with its 95%
t interval. ``--add`` keeps the runs already in ``learning.json`` (other seeds, with the same overrides) and
adds these to them. Results: ``bench/results/<name>.{json,md,png}`` (``--name``, default ``learning``: another
name keeps a variant, e.g. another learning rate, apart from the default's results). About 10 minutes a run on
2 CPU cores; run it alone on the machine (wall times are part of the result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, machine, write_results
from sppo_pl.report import markdown_table
from sppo_pl.training import val_table


def previous_runs(extra: list[str], name: str = "learning") -> list[dict]:
    """The runs in ``<name>.json``, if they were made with the same ``train.py`` overrides."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("overrides", []) != extra:
        raise ValueError(f"--add: {path} was made with overrides {old.get('overrides')}, not {extra}")
    return old["runs"]


def run_one(loss: str, seed: int, log_dir: Path, extra: list[str], name: str = "learning") -> dict:
    """One training run (Hydra task ``<name>_<loss>_seed<seed>``); its val/acc per iteration and wall time.
    The run is the one new run directory: earlier runs of the same task stay where they are."""
    task = f"{name}_{loss}_seed{seed}"
    runs = log_dir / task / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    cmd = [sys.executable, "train.py", f"loss={loss}", f"seed={seed}", f"task_name={task}"]
    cmd += [f"paths.log_dir={log_dir}", "export_hf=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    (run,) = set(runs.iterdir()) - before
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


# Student's t 0.975 quantiles by degrees of freedom: the 95% interval of a mean of n = df + 1 paired differences
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-seed differences and its 95% t interval (needs 2 to 11 seeds)."""
    n = len(diffs)
    if n - 1 not in T975:
        raise ValueError(f"a 95% interval needs 2 to {max(T975) + 1} paired seeds, got {n}")
    mean = statistics.mean(diffs)
    half = T975[n - 1] * statistics.stdev(diffs) / n**0.5
    return mean, mean - half, mean + half


def per_loss_summary(runs: list[dict]) -> dict[str, dict]:
    """Per loss: the mean gain in val/acc (last iteration minus start), how many runs rose at every
    iteration, and the mean wall time."""
    out: dict[str, dict] = {}
    for loss in dict.fromkeys(r["loss"] for r in runs):
        mine = [r for r in runs if r["loss"] == loss]
        out[loss] = {
            "gain_mean": statistics.mean(r["val_acc"][-1] - r["val_acc"][0] for r in mine),
            "rising_every_iteration": sum(
                all(b > a for a, b in zip(r["val_acc"], r["val_acc"][1:])) for r in mine
            ),
            "runs": len(mine),
            "wall_s_mean": statistics.mean(r["wall_s"] for r in mine),
        }
    return out


def comparison(runs: list[dict], a: str = "sppo", b: str = "dpo") -> dict | None:
    """The per-seed difference of the final val/acc, ``a`` minus ``b`` (same seed: same start, same
    prompts), with its 95% interval; None without two seeds run with both."""
    final = {(r["loss"], r["seed"]): r["val_acc"][-1] for r in runs}
    seeds = sorted(s for (loss, s) in final if loss == a and (b, s) in final)
    if len(seeds) < 2:
        return None
    diffs = [final[a, s] - final[b, s] for s in seeds]
    mean, low, high = paired_interval(diffs)
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": mean,
        "ci95": [low, high],
        "separated": low > 0 or high < 0,
    }


def summary_lines(summary: dict[str, dict], diff: dict | None) -> list[str]:
    lines = [
        "| loss | mean gain (last - start) | runs rising at every iteration | mean wall (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {loss} | {s['gain_mean']:+.4f} | {s['rising_every_iteration']} of {s['runs']} | {s['wall_s_mean']:.0f} |"
        for loss, s in summary.items()
    ]
    if diff is not None:
        verdict = "separated" if diff["separated"] else "not separated: the interval holds 0"
        lines += [
            "",
            f"Final val/acc, SPPO minus DPO, per seed {diff['seeds']}: "
            + ", ".join(f"{d:+.4f}" for d in diff["diffs"])
            + f"; mean {diff['mean']:+.4f}, 95% interval [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}] ({verdict}).",
        ]
    return lines


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
    parser.add_argument("--add", action="store_true", help="add to the runs already in <name>.json")
    parser.add_argument("--name", default="learning", help="results bench/results/<name>.*, tasks <name>_*")
    parser.add_argument("extra", nargs="*", help="train.py overrides for every run (after --)")
    args = parser.parse_args(argv)
    runs = previous_runs(args.extra, args.name) if args.add else []
    done = {(r["loss"], r["seed"]) for r in runs}
    runs += [
        run_one(loss, seed, Path(args.log_dir), args.extra, args.name)
        for seed in args.seeds
        for loss in args.losses
        if (loss, seed) not in done
    ]
    order = list(dict.fromkeys([*args.losses, *(r["loss"] for r in runs)]))
    runs.sort(key=lambda r: (order.index(r["loss"]), r["seed"]))
    means = summarise(runs)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "overrides": args.extra, "runs": runs}
    result["mean_val_acc"] = means
    result["summary"], result["sppo_minus_dpo"] = per_loss_summary(runs), comparison(runs)
    head = [f"# val/acc per iteration ({result['date']}, overrides: {' '.join(args.extra) or 'none'})", ""]
    lines = head + [table(runs, means), "", *summary_lines(result["summary"], result["sppo_minus_dpo"])]
    write_results(args.name, result, lines)
    plot(runs, means, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
