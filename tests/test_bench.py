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


def test_a_learning_run_is_read_from_its_own_new_run_directory(tmp_path, monkeypatch):
    """A task run before (an earlier bench) leaves its run directory: the new run is the one read, not an
    error after 10 minutes of training."""
    from types import SimpleNamespace

    import bench.learning

    runs = tmp_path / "lr2_sppo_seed1" / "runs"
    old = runs / "2026-11-26_10-00-00_aaaaaa"
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("val/acc,val/iteration\n0.1,0\n0.1,1\n")

    def train(cmd, **kwargs):  # stands for train.py: one new run directory with its metrics
        assert "task_name=lr2_sppo_seed1" in cmd and "optim.optimizer.lr=2e-5" in cmd
        new = runs / "2026-11-27_10-00-00_bbbbbb"
        new.mkdir()
        (new / "metrics.csv").write_text("val/acc,val/iteration\n0.25,0\n0.5,1\n")
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(bench.learning.subprocess, "run", train)
    run = bench.learning.run_one("sppo", 1, tmp_path, ["optim.optimizer.lr=2e-5"], name="lr2")
    assert run["val_acc"] == [0.25, 0.5] and run["run_dir"].endswith("bbbbbb")


def test_timed_seconds_times_only_the_calls_after_the_warmups_and_runs_before_each():
    from bench.common import timed_seconds

    calls, befores = [], []
    seconds = timed_seconds(lambda: calls.append(len(befores)), 3, warmup=2, before=lambda: befores.append(1))
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert calls == [1, 2, 3, 4, 5]  # 5 calls, each after its own before()


def test_the_paired_interval_is_the_t_interval_of_the_mean_difference():
    from bench.learning import paired_interval

    # mean 0.1; sample sd sqrt(0.02 / 3) = 0.08165; half width t(0.975, 3) = 3.182 x 0.08165 / 2 = 0.1299
    mean, low, high = paired_interval([0.1, 0.2, 0.0, 0.1])
    assert (mean, low, high) == pytest.approx((0.1, -0.0299, 0.2299), abs=1e-4)
    with pytest.raises(ValueError, match="needs 2 to 11 paired seeds, got 1"):
        paired_interval([0.1])


def test_sppo_and_dpo_are_compared_seed_by_seed_on_the_final_iteration():
    from bench.learning import comparison, per_loss_summary

    runs = [
        {"loss": "sppo", "seed": 0, "val_acc": [0.2, 0.3, 0.4], "wall_s": 10.0},
        {"loss": "sppo", "seed": 1, "val_acc": [0.3, 0.2, 0.5], "wall_s": 20.0},
        {"loss": "dpo", "seed": 0, "val_acc": [0.2, 0.25, 0.3], "wall_s": 30.0},
        {"loss": "dpo", "seed": 1, "val_acc": [0.3, 0.3, 0.3], "wall_s": 30.0},
        {"loss": "dpo", "seed": 2, "val_acc": [0.1, 0.2, 0.3], "wall_s": 30.0},  # no SPPO partner: left out
    ]
    diff = comparison(runs)
    assert diff["seeds"] == [0, 1] and diff["diffs"] == pytest.approx([0.1, 0.2])
    # mean 0.15, sd 0.0707, half width 12.706 x 0.0707 / sqrt(2) = 0.6353: the interval holds 0
    assert diff["ci95"] == pytest.approx([-0.4853, 0.7853], abs=1e-4) and not diff["separated"]
    summary = per_loss_summary(runs)
    assert summary["sppo"] == {
        "gain_mean": pytest.approx(0.2),
        "rising_every_iteration": 1,
        "runs": 2,
        "wall_s_mean": 15.0,
    }
    assert summary["dpo"]["rising_every_iteration"] == 2  # a flat run (seed 1) does not rise


def test_task_specs_and_the_informative_share():
    from bench.task_choice import informative_share, parse_task

    assert parse_task("+-*:1:2") == {"ops": ["+", "-", "*"], "min_digits": 1, "max_digits": 2}
    groups = [[1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert informative_share(groups, 4) == pytest.approx(1 / 3)  # only the first group disagrees in 4
    assert informative_share(groups, 6) == pytest.approx(2 / 3)


def test_task_choice_table_names_each_informative_column_once():
    from bench.task_choice import table_columns

    assert [c for c in table_columns(4) if c.startswith("informative")] == ["informative_k4"]
    assert [c for c in table_columns(8) if c.startswith("informative")] == [
        "informative_k4",
        "informative_k8",
    ]


def test_task_choice_samples_and_scores_as_the_composed_config_says(tiny_tokenizer):
    """bench.task_choice takes its sampling settings and its oracle from conf/ (overrides included): an
    engine that answers every greedy prompt right and half of each group's samples right gives accuracy 1,
    sample accuracy 1/2 and only informative groups, and it was asked for the configured temperature."""
    import re
    from types import SimpleNamespace

    from bench.common import train_config
    from bench.task_choice import measure

    asked = []

    def answer(ids):
        problem = re.search(r"What is (.+?)\?", tiny_tokenizer.decode(ids)).group(1)
        return str(eval(problem))  # the task's own "a op b"

    def generate(prompt_ids, sampling, seeds=None):
        asked.append(sampling)
        n = sampling.n
        texts = lambda ids: [f"\\boxed{{{answer(ids)}}}" if i < (n + 1) // 2 else "no idea" for i in range(n)]  # noqa: E731
        return [SimpleNamespace(texts=texts(ids), token_ids=[[1, 2]] * n) for ids in prompt_ids]

    cfg = train_config(["rollout.sampling.temperature=0.9"])
    row = measure(SimpleNamespace(generate=generate), tiny_tokenizer, cfg, "+-*:1:2", n_prompts=4, k=4)
    assert (asked[0].n, asked[0].temperature) == (1, 0.0)
    assert (asked[1].n, asked[1].temperature, asked[1].max_tokens) == (4, 0.9, cfg.model.max_response_len)
    assert row["val_acc"] == 1.0 and row["sample_acc"] == 0.5
    assert row["informative_k4"] == 1.0 and row["response_tokens"] == 2.0


def test_the_iteration_timer_starts_an_iteration_at_its_first_training_batch():
    """The rollout callback makes an iteration's rollouts in on_train_epoch_start, after this callback's: a
    start marked there put iteration 0's rollouts in the window, and iteration 1's were subtracted."""
    from types import SimpleNamespace

    from bench.iteration import IterationTimer

    timer = IterationTimer("unused.json")
    trainer = SimpleNamespace(current_epoch=0)
    timer.on_train_epoch_start(trainer, None)  # Lightning calls it; it marks nothing
    assert timer._row(trainer)["start"] is None
    timer.on_train_batch_start(trainer, None, {}, 0)
    first = timer._row(trainer)["start"]
    timer.on_train_batch_end(trainer, None, None, {}, 0)
    timer.on_train_batch_start(trainer, None, {}, 1)
    assert first is not None and timer._row(trainer)["start"] == first
