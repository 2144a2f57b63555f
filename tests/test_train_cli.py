"""End to end through `python train.py` (real vLLM, weight sync, oracle, loss, validation) on a tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_train(
    tmp_path: Path,
    *overrides: str,
    pythonpath: Path | None = None,
    entry: tuple[str, ...] = ("train.py",),
    extra_env: dict[str, str] | None = None,
    returncode: int | None = 0,
) -> subprocess.CompletedProcess:
    """``python train.py`` (or another Hydra ``entry``, e.g. ``("-m", "sppo_pl.eval")``) with these overrides
    (and ``extra_env`` added to the environment); it must exit with ``returncode`` (None: any)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # as a user with no W&B account
    env.update(extra_env or {})
    env["SPPO_MODELS_DIR"] = str(tmp_path / "models")
    env["SPPO_DATA_DIR"] = str(tmp_path / "data")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, *entry, *flags, f"paths.log_dir={tmp_path / 'outputs'}", *rest]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert returncode is None or proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run's ``metrics.csv``."""
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def only_run_dir(tmp_path: Path, task: str) -> Path:
    (run,) = (tmp_path / "outputs" / task / "runs").iterdir()
    return run


def test_two_epoch_smoke_run_writes_every_artifact_and_trains_on_fresh_rollouts(tmp_path):
    record = tmp_path / "alignment.json"
    proc = run_train(
        tmp_path,
        "experiment=smoke",
        "+callbacks.alignment._target_=tests.alignment.RolloutAlignmentCheck",
        f"+callbacks.alignment.record={record}",
    )
    run = only_run_dir(tmp_path, "smoke")
    for name in (
        "config_resolved.yaml",
        ".hydra/config.yaml",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "plots/loss.png",
    ):
        assert (run / name).exists(), name
    for epoch in (0, 1):
        rows = [json.loads(line) for line in (run / f"rollouts/epoch_{epoch}.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(len(r["responses"]) == 2 for r in rows)
        assert set(rows[0]) >= {
            "prompt",
            "responses",
            "scores",
            "p_hat",
            "ref_logps",
            "answer",
            "policy_step",
        }
        assert all(len(r["ref_logps"]) == 2 and all(lp < 0 for lp in r["ref_logps"]) for r in rows)
    metrics = read_metrics(run)
    names = set(metrics[0])
    assert {"train/loss", "train/log_ratio", "train/target", "val/acc", "val/reward_mean"} <= names
    assert {
        "rollout/reward_mean",
        "rollout/win_rate_std",
        "rollout/tokens_per_s",
        "rollout/gen_s",
        "rollout/sync_s",
    } <= names
    iterations = [float(r["val/iteration"]) for r in metrics if r.get("val/iteration")]
    assert iterations == [0.0, 1.0, 2.0]  # before training, then after each self-play iteration
    seen = json.loads(record.read_text())
    assert {r["epoch"] for r in seen} == {0, 1}
    # iteration 0's checkpoint was on disk before iteration 1 began: an interruption loses at most one
    assert json.loads(record.with_suffix(".checkpoints.json").read_text()) == {"0": False, "1": True}
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "epoch_01.ckpt"
    assert seen[-1]["rollout_step"] > 0  # epoch 1's rollouts came from the trained policy
    assert "| iteration | val/acc" in proc.stdout


def test_resume_trains_on_the_checkpointed_rollouts(tmp_path):
    run_train(tmp_path, "experiment=smoke", "callbacks.model_checkpoint.save_top_k=-1", "task_name=first")
    first = only_run_dir(tmp_path, "first")
    ckpt = first / "checkpoints" / "epoch_00.ckpt"
    assert ckpt.exists() and (first / "rollouts/epoch_1.jsonl").exists()
    record = tmp_path / "alignment.json"
    run_train(
        tmp_path,
        "experiment=smoke",
        f"ckpt_path={ckpt}",
        "task_name=resumed",
        "+callbacks.alignment._target_=tests.alignment.RolloutAlignmentCheck",
        f"+callbacks.alignment.record={record}",
    )
    resumed = only_run_dir(tmp_path, "resumed")
    # epoch 1's rollouts are made again from the checkpoint's policy (iteration 0's checkpoint is written
    # before they are made): exactly the rollouts the uninterrupted run made
    assert sorted(p.name for p in (resumed / "rollouts").iterdir()) == [
        "epoch_1.generated.jsonl",
        "epoch_1.jsonl",
    ]
    assert (resumed / "rollouts/epoch_1.jsonl").read_text() == (first / "rollouts/epoch_1.jsonl").read_text()
    seen = json.loads(record.read_text())
    assert seen and {r["epoch"] for r in seen} == {1} and all(r["rollout_iteration"] == 1 for r in seen)
    # and it ends where the uninterrupted run ended
    from sppo_pl.export import load_policy_from_checkpoint

    want = load_policy_from_checkpoint(first / "checkpoints" / "last.ckpt").state_dict()
    got = load_policy_from_checkpoint(resumed / "checkpoints" / "last.ckpt").state_dict()
    start = load_policy_from_checkpoint(ckpt).state_dict()
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-4
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-6


def test_multirun_sweep_runs_two_jobs_in_their_own_directories(tmp_path):
    run_train(tmp_path, "-m", "experiment=smoke", "loss.eta=1,10", "trainer.max_epochs=1")
    (sweep,) = (tmp_path / "outputs" / "smoke" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    etas = [yaml.safe_load((j / "config_resolved.yaml").read_text())["loss"]["eta"] for j in jobs]
    assert etas == [1.0, 10.0]
    assert all((j / "metrics.csv").exists() and (j / "rollouts/epoch_0.jsonl").exists() for j in jobs)


def test_hf_rollout_engine_and_wandb_logger_without_an_account(tmp_path):
    run_train(
        tmp_path,
        "experiment=smoke",
        "rollout=hf",
        "logger=wandb",
        "trainer.max_epochs=1",
        "task_name=smoke_hf",
    )
    run = only_run_dir(tmp_path, "smoke_hf")
    assert (run / "rollouts/epoch_0.jsonl").exists() and (run / "metrics.csv").exists()
    assert list((run / "wandb").glob("offline-run-*")), "W&B should log offline when no API key is set"


def test_print_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "_target_: sppo_pl.module.SPPOModule" in proc.stdout


def test_pairwise_oracle_run_logs_win_rate_against_the_start(tmp_path):
    from sppo_pl.utils.tiny_model import build_tiny_classifier

    judge = build_tiny_classifier(tmp_path / "models" / "tiny-pairwise")
    run_train(
        tmp_path, "experiment=smoke", "reward=pairwise", f"reward.oracle.model_path={judge}", "task_name=pw"
    )
    run = only_run_dir(tmp_path, "pw")
    rows = [json.loads(line) for line in (run / "rollouts/epoch_1.jsonl").read_text().splitlines()]
    for r in rows:  # K = 2: P_hat = (1/2 + P(y_k > y_other)) / 2, so the two sum to 1
        assert abs(sum(r["p_hat"]) - 1) < 1e-9 and len(r["scores"]) == 2
    with (run / "metrics.csv").open() as f:
        val = [r for r in csv.DictReader(f) if r.get("val/iteration")]
    assert [float(r["val/iteration"]) for r in val] == [0.0, 1.0, 2.0]
    assert not val[0].get("val/win_rate")  # the start is what later iterations are compared with
    assert all(0.0 <= float(r["val/win_rate"]) <= 1.0 for r in val[1:])
    assert not any(r.get("val/reward_mean") for r in val)  # a pairwise model has no pointwise score
    assert (run / "plots" / "win_rate.png").exists() and not (run / "plots" / "accuracy.png").exists()


def test_a_sweep_on_two_devices_is_refused_before_any_model_loads(tmp_path):
    """A sweep runs its jobs in one process: Lightning started rank 1 once, with the whole sweep's command
    line, so job 1 waited for ever for a rank 1 that was running job 0 again."""
    proc = run_train(tmp_path, "-m", "experiment=smoke", "loss.eta=1,10", "trainer.devices=2", returncode=1)
    assert "a Hydra sweep (-m or hparams_search=) runs its jobs in one process" in proc.stderr
    assert "trainer.devices=2 asks for 2 ranks" in proc.stderr
    assert not (tmp_path / "models").exists()
