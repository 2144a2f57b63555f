"""The reference recipes' CPU twins end to end through ``python train.py`` (real vLLM, oracle, loss), with
their settings in effect: what was sampled, scored and logged. Their full-size settings: test_config.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train_cli import only_run_dir, read_metrics, run_train

pytestmark = pytest.mark.slow


def _rollouts(run: Path, epoch: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"rollouts/epoch_{epoch}.jsonl").read_text().splitlines()]


def _column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


def _lr_per_step(rows: list[dict], name: str) -> list[float]:
    """The learning rate at each optimizer step (the monitor logs it at every batch of the step)."""
    return list({int(r["step"]): float(r[name]) for r in rows if r.get(name)}.values())


def test_verl_math_twin(tmp_path):
    run_train(tmp_path, "experiment=verl_math_tiny")
    run = only_run_dir(tmp_path, "verl_math_tiny")
    for epoch in (0, 1):
        rows = _rollouts(run, epoch)
        assert len(rows) == 8 and all(len(r["responses"]) == 1 and r["p_hat"] == [0.5] for r in rows)
        assert all(r["prompt"].endswith("within \\boxed{}.") and r["fields"]["level"] for r in rows)
    answers = {r["prompt"].split(" Let's")[0]: r["answer"] for r in _rollouts(run, 0)}
    assert answers["Simplify $\\frac{6}{8}$."] == "\\frac{3}{4}"  # the solution's last \boxed{}
    metrics = read_metrics(run)
    assert _column(metrics, "val/iteration") == [0.0, 1.0, 2.0] and len(_column(metrics, "val/acc")) == 3
    # 8 prompts in batches of 4, 2 accumulated: one optimizer step per iteration, after 1 warmup step
    assert _lr_per_step(metrics, "lr-AdamW") == [0.0, 1e-3]
    assert (run / "hf_model" / "config.json").exists() and (run / "plots" / "accuracy.png").exists()


def test_uclaml_ultrafeedback_twin_and_its_evaluation(tmp_path):
    run_train(tmp_path, "experiment=uclaml_ultrafeedback_tiny")
    run = only_run_dir(tmp_path, "uclaml_ultrafeedback_tiny")
    assert (
        tmp_path / "models" / "tiny-pairrm" / "model.safetensors"
    ).exists()  # built by prepare.tiny_oracle
    assert "sppo_pl.rewards.pairrm.PairRMOracle" in (run / "config_resolved.yaml").read_text()
    for epoch in (0, 1, 2):
        rows = _rollouts(run, epoch)
        assert len(rows) == 4 and all(len(r["responses"]) == 5 and r["answer"] is None for r in rows)
        # joint PairRM ranking: P is a consistent matrix, so a prompt's P_hat average exactly 1/2
        assert all(abs(sum(r["p_hat"]) / 5 - 0.5) < 1e-6 for r in rows)
        assert all(len(set(r["scores"])) > 1 for r in rows)
    metrics = read_metrics(run)
    assert _column(metrics, "val/iteration") == [0.0, 1.0, 2.0, 3.0]
    assert len(_column(metrics, "val/win_rate")) == 3 and not _column(metrics, "val/acc")
    # RMSprop with the linear schedule restarted every iteration (2 steps: 1 warmup, 1 decay)
    assert _lr_per_step(metrics, "lr-RMSprop") == [0.0, 1e-3] * 3

    run_train(
        tmp_path,
        "experiment=uclaml_ultrafeedback_tiny",
        f"policy={run}",
        "eval.samples=0",
        "task_name=uclaml_eval",
        entry=("-m", "sppo_pl.eval"),
    )
    result = json.loads((only_run_dir(tmp_path, "uclaml_eval") / "eval.json").read_text())
    assert result["metrics"]["start"] == {}  # a pairwise oracle has no pointwise score
    assert 0.0 < result["metrics"]["policy"]["win_rate"] < 1.0 and result["n_prompts"] == 2
