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
