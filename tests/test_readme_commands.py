"""Every `python train.py ...` line of the README's quick start composes and passes the checks that need no
machine (the placeholders `<run>` are filled with a real run folder; GPU-only settings are composed only)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.utils import instantiate

from sppo_pl.config import check_loss, check_required, check_sampling
from tests.test_config import make_cfg

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"(?m)^python train\.py(.*?)(?:\s+#.*)?$", section)
    return [shlex.split(line) for line in lines]


def test_the_quick_start_lists_its_commands():
    assert len(quick_start_commands()) >= 10


@pytest.mark.parametrize("args", quick_start_commands(), ids=lambda a: " ".join(a) or "(default)")
def test_each_quick_start_command_composes(tmp_path, args):
    run = tmp_path / "run"
    overrides = [a.replace("<run>", str(run)) for a in args if not a.startswith("-") and a != "job"]
    overrides = [o for o in overrides if not o.startswith("loss.eta=1,")]  # a sweep: one value composes
    cfg = make_cfg(tmp_path, overrides)
    check_required(cfg)
    check_sampling(cfg)
    check_loss(cfg, instantiate(cfg.loss))
