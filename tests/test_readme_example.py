"""The README's custom-oracle example, run exactly as written (on the smoke experiment's tiny model)."""

from __future__ import annotations

import csv
import re
import shlex

import pytest

from tests.test_train_cli import ROOT, only_run_dir, run_train

pytestmark = pytest.mark.slow


def readme_example() -> tuple[str, list[str]]:
    """(the Python file, the command's overrides) between the README's example markers."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- custom-reward-example -->")[1].split("<!-- /custom-reward-example -->")[0]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    command = shlex.split(re.search(r"```bash\n(.*?)```", block, re.S).group(1))
    assert command[:2] == ["python", "train.py"]
    return code, command[2:]


def test_readme_custom_reward_example_runs(tmp_path):
    code, overrides = readme_example()
    assert len(code.strip().splitlines()) < 20
    (tmp_path / "my_reward.py").write_text(code)
    run_train(tmp_path, "experiment=smoke", *overrides, "task_name=readme", pythonpath=tmp_path)
    run = only_run_dir(tmp_path, "readme")
    assert "my_reward.ShortAndRight" in (run / "config_resolved.yaml").read_text()
    with (run / "metrics.csv").open() as f:
        val = [r for r in csv.DictReader(f) if r.get("val/iteration")]
    # the example's scores: 4 * correct - length / 100, and the tiny model is never right
    assert val and all(-2.0 < float(r["val/reward_mean"]) < 0.0 for r in val)
    assert all(r.get("val/win_rate") for r in val[1:])
