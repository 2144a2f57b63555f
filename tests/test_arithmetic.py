"""The seeded arithmetic problem generator."""

from __future__ import annotations

import re

import pytest

from sppo_pl.data.arithmetic import INSTRUCTION, arithmetic_dataset, arithmetic_splits


def test_deterministic_correct_and_in_range():
    a = arithmetic_dataset(50, seed=7)
    assert a["prompt"] == arithmetic_dataset(50, seed=7)["prompt"]
    assert a["prompt"] != arithmetic_dataset(50, seed=8)["prompt"]
    for row in a:
        m = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\? (.*)", row["prompt"])
        x, op, y, instruction = m.groups()
        assert instruction == INSTRUCTION and 2 <= len(x) <= 3 and 2 <= len(y) <= 3
        assert int(row["answer"]) == {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]
    assert len(set(a["prompt"])) == 50


def test_splits_are_disjoint():
    d = arithmetic_splits(200, 50, seed=0, ops=("+",), min_digits=2, max_digits=2)
    assert len(d["train"]) == 200 and len(d["test"]) == 50
    assert not set(d["train"]["prompt"]) & set(d["test"]["prompt"])


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n must be >= 1"):
        arithmetic_dataset(0)
    with pytest.raises(ValueError, match="min_digits"):
        arithmetic_dataset(5, min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="ops"):
        arithmetic_dataset(5, ops=("/",))
    with pytest.raises(ValueError, match="could not draw 500 distinct"):
        arithmetic_dataset(500, ops=("+",), min_digits=1, max_digits=1)
