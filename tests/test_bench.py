"""The benchmarks' bookkeeping (their timings are measured by hand, never in tests): how an iteration's wall
time is split, how learning runs are averaged."""

from __future__ import annotations

import pytest

from bench.iteration import breakdown
from bench.learning import summarise, table


def test_iteration_breakdown_splits_the_wall_time_and_keeps_the_rest_as_bookkeeping():
    timer = [{"start": 100.0, "train_s": 50.0, "val_s": 8.0, "checkpoint_s": 4.0}, {"start": 180.0}]
    metrics = [
        {
            "rollout/iteration": "0.0",
            "rollout/gen_s": "1",
            "rollout/score_s": "1",
            "rollout/ref_logps_s": "1",
        },
        {
            "rollout/iteration": "1.0",
            "rollout/gen_s": "10",
            "rollout/score_s": "0.5",
            "rollout/ref_logps_s": "5",
            "rollout/sync_s": "1.5",
        },
    ]
    parts = breakdown(timer, metrics)
    assert parts["wall"] == 80.0
    assert parts["val"] == 6.5  # validation's own sync is counted once, under sync
    assert (parts["train"], parts["gen"], parts["ref_logps"], parts["checkpoint"]) == (50.0, 10.0, 5.0, 4.0)
    assert parts["bookkeeping"] == pytest.approx(80 - (50 + 6.5 + 10 + 0.5 + 5 + 1.5 + 4))


def test_learning_runs_are_averaged_per_iteration_and_tabled():
    runs = [
        {"loss": "sppo", "seed": 0, "val_acc": [0.1, 0.2]},
        {"loss": "sppo", "seed": 1, "val_acc": [0.3, 0.5]},
        {"loss": "dpo", "seed": 0, "val_acc": [0.1, 0.1]},
    ]
    means = summarise(runs)
    assert means["sppo"] == pytest.approx([0.2, 0.35]) and means["dpo"] == [0.1, 0.1]
    lines = table(runs, means).splitlines()
    assert lines[0] == "| iteration | sppo seed 0 | sppo seed 1 | dpo seed 0 | sppo mean | dpo mean |"
    assert lines[2] == "| 0 (start) | 0.1000 | 0.3000 | 0.1000 | 0.2000 | 0.1000 |"


def test_learning_add_keeps_earlier_runs_only_when_made_with_the_same_overrides(tmp_path, monkeypatch):
    import json

    import bench.learning

    monkeypatch.setattr(bench.learning, "RESULTS", tmp_path)
    assert bench.learning.previous_runs([]) == []  # nothing measured yet
    runs = [{"loss": "sppo", "seed": 0, "val_acc": [0.1, 0.2]}]
    (tmp_path / "learning.json").write_text(json.dumps({"overrides": ["trainer.max_epochs=2"], "runs": runs}))
    assert bench.learning.previous_runs(["trainer.max_epochs=2"]) == runs
    with pytest.raises(ValueError, match="learning.json was made with overrides"):
        bench.learning.previous_runs([])


def test_timed_seconds_times_only_the_calls_after_the_warmups_and_runs_before_each():
    from bench.common import timed_seconds

    calls, befores = [], []
    seconds = timed_seconds(lambda: calls.append(len(befores)), 3, warmup=2, before=lambda: befores.append(1))
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert calls == [1, 2, 3, 4, 5]  # 5 calls, each after its own before()
