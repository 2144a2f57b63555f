"""The end-of-run table from metrics.csv."""

from __future__ import annotations

from sppo_pl.training import format_table, val_table


def test_val_table_and_format(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,train/loss,val/acc,val/iteration,val/reward_mean,val/win_rate\n"
        "0,,0.25,0,0.25,\n"
        "0,1.5,,,,\n"
        "1,,0.5,1,0.5,0.625\n"
    )
    rows = val_table(csv)
    assert rows == [
        {"val/acc": 0.25, "val/iteration": 0.0, "val/reward_mean": 0.25},
        {"val/acc": 0.5, "val/iteration": 1.0, "val/reward_mean": 0.5, "val/win_rate": 0.625},
    ]
    assert format_table(rows).splitlines() == [
        "| iteration | val/acc | val/reward_mean | val/win_rate |",
        "|---|---|---|---|",
        "| 0 | 0.2500 | 0.2500 |  |",
        "| 1 | 0.5000 | 0.5000 | 0.6250 |",
    ]
    assert val_table(tmp_path / "missing.csv") == []


def test_iteration_series_averages_per_iteration():
    from sppo_pl.plots import iteration_series

    rows = [
        {"epoch": "0", "train/loss": "2.0"},
        {"epoch": "0", "train/loss": "4.0"},
        {"epoch": "1", "train/loss": "1.0"},
        {"epoch": "1", "train/loss": ""},
        {"epoch": "", "train/loss": "9.0"},
    ]
    assert iteration_series(rows, "train/loss", "epoch") == ([0.0, 1.0], [3.0, 1.0])
    assert iteration_series(rows, "val/acc", "val/iteration") == ([], [])


def test_plots_are_pngs_for_the_metrics_the_run_logged(tmp_path):
    from sppo_pl.plots import plot_metrics

    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,train/loss,val/acc,val/iteration,val/reward_mean,rollout/reward_mean,rollout/iteration\n"
        "0,,0.25,0,0.25,,\n"
        "0,,,,,0.1,0\n"
        "0,1.5,,,,,\n"
        "1,,0.5,1,0.5,,\n"
    )
    files = plot_metrics(csv, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["accuracy.png", "loss.png", "reward.png"]  # no win rate logged
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
