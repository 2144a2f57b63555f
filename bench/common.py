"""What every benchmark shares: where results go, how the machine is described, how results are written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def train_config(overrides: list[str] | tuple = ()):
    """``conf/train.yaml`` composed as ``python train.py <overrides>`` composes it (our resolvers registered),
    for a benchmark that samples, scores or loads as a run would. ``paths.output_dir`` is not resolvable."""
    from hydra import compose, initialize_config_dir

    import sppo_pl.config  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def machine() -> str:
    """This machine in a few words, for the results ("x86_64, 2 cores, no GPU")."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


def timed_seconds(fn, repeats: int, warmup: int = 0, before=None) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; ``before()`` (a barrier, a
    device synchronisation) runs before each call, outside the timing."""
    seconds = []
    for _ in range(warmup + repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def run_info(**fields) -> dict:
    """What every result starts with: the date, this machine, the torch version, then ``fields``."""
    import torch

    return {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "torch": torch.__version__, **fields}


def write_results(name: str, result: dict, lines: list[str]) -> None:
    """``bench/results/<name>.json`` (everything measured) and ``<name>.md`` (the table), and print the table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
