"""The Makefile's set-up survives a registry download cut off mid-file: each downloading step is tried again.

A fake interpreter stands in for `.venv/bin/python`: it logs each call and fails as told, so no network is used.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
# log the call; fail the first FAILS calls with the same arguments
echo "$*" >> "{log}"
seen=$(grep -cxF -- "$*" "{log}")
test "$seen" -gt {fails} || exit 1
"""


def run_install(tmp_path: Path, fails: int) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(log=log, fails=fails))
    python.chmod(0o755)
    log.touch()
    args = ["make", "-C", str(ROOT), "install", f"VENV={venv}", "RETRIES=3", "RETRY_WAIT=0"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return proc, log.read_text().splitlines(), venv / ".installed"


def test_each_install_step_is_tried_again_after_a_failed_download(tmp_path):
    proc, calls, stamp = run_install(tmp_path, fails=2)
    assert proc.returncode == 0, proc.stderr
    steps = list(dict.fromkeys(calls))
    assert [s.split()[-1] for s in steps] == [
        "pip",
        "torch==2.13.0+cpu",
        "torch==2.13.0+cpu",
        "xgrammar==0.2.8",
    ]
    assert "-e .[cpu,dev] torch==2.13.0+cpu" in steps[2]
    assert [calls.count(s) for s in steps] == [3, 3, 3, 3]
    assert proc.stderr.count("failed; trying again in 0 s") == 8
    assert stamp.is_file()


def test_a_step_failing_every_attempt_stops_the_install_unstamped(tmp_path):
    proc, calls, stamp = run_install(tmp_path, fails=3)
    assert proc.returncode != 0
    assert calls == ["-m pip install -q --upgrade pip"] * 3
    assert not stamp.exists()


def test_make_model_fetches_into_sppo_models_dir_when_set(tmp_path):
    """The training config reads the model from ${SPPO_MODELS_DIR}; `make model` fetches it there too."""
    env = {**os.environ, "SPPO_MODELS_DIR": str(tmp_path / "shared")}
    args = ["make", "-n", "-C", str(ROOT), "model", f"VENV={tmp_path / 'venv'}"]
    printed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60).stdout
    assert f"--out {tmp_path / 'shared'}/SmolLM2-135M-Instruct" in printed
