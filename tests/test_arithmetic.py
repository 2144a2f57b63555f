"""The seeded arithmetic problem generator."""

from __future__ import annotations

import random
import re

import pytest

from sppo_pl.data.arithmetic import (
    INSTRUCTION,
    arithmetic_dataset,
    arithmetic_splits,
    make_problem,
    n_distinct_problems,
)

PROMPT = re.compile(r"What is (\d+) ([-+*]) (\d+)\? (.*)")


def evaluate(prompt: str) -> tuple[int, int, str, int]:
    """(a, b, op, a op b) read back from a prompt."""
    a, op, b, instruction = PROMPT.fullmatch(prompt).groups()
    assert instruction == INSTRUCTION
    x, y = int(a), int(b)
    return x, y, op, {"+": x + y, "-": x - y, "*": x * y}[op]


def test_instruction_text():
    assert INSTRUCTION == r"Put the final answer within \boxed{}."


def test_make_problem_is_seeded_and_correct():
    p = make_problem(random.Random(3), ["*"], 2, 2)
    assert p == make_problem(random.Random(3), ["*"], 2, 2)
    a, b, op, result = evaluate(p["prompt"])
    assert op == "*" and 10 <= a <= 99 and 10 <= b <= 99 and p["answer"] == str(result)


def test_deterministic_by_seed():
    a = arithmetic_dataset(50, seed=7)
    assert a.column_names == ["prompt", "answer"]
    assert a["prompt"] == arithmetic_dataset(50, seed=7)["prompt"]
    assert a["prompt"] != arithmetic_dataset(50, seed=8)["prompt"]


def test_answers_are_correct_and_distinct():
    ds = arithmetic_dataset(300, seed=0)
    assert len(set(ds["prompt"])) == 300
    ops = set()
    for row in ds:
        a, b, op, result = evaluate(row["prompt"])
        assert row["answer"] == str(result)
        ops.add(op)
    assert ops == {"+", "-", "*"}
    assert any(row["answer"].startswith("-") for row in ds)  # subtraction can go negative


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (2, 3), (3, 4)])
def test_digit_ranges(lo, hi):
    lengths = set()
    for row in arithmetic_dataset(60, seed=1, min_digits=lo, max_digits=hi):
        a, b, _, _ = evaluate(row["prompt"])
        lengths |= {len(str(a)), len(str(b))}
    assert lengths == set(range(lo, hi + 1))


def test_ops_subset():
    ds = arithmetic_dataset(40, ops=("-",))
    assert {evaluate(p)[2] for p in ds["prompt"]} == {"-"}


def test_exclude_is_respected():
    first = arithmetic_dataset(20, seed=0)
    again = arithmetic_dataset(20, seed=0, exclude=set(first["prompt"][:10]))
    assert not set(again["prompt"]) & set(first["prompt"][:10])


def test_splits_are_disjoint():
    d = arithmetic_splits(200, 50, seed=0, ops=("+",), min_digits=2, max_digits=2)
    assert list(d) == ["train", "test"]
    assert len(d["train"]) == 200 and len(d["test"]) == 50
    assert not set(d["train"]["prompt"]) & set(d["test"]["prompt"])
    # the test split is the seed + 1 dataset
    assert (
        d["test"]["prompt"]
        == arithmetic_dataset(50, seed=1, ops=("+",), min_digits=2, max_digits=2)["prompt"]
    )


def test_train_holds_no_commuted_twin_of_a_test_problem():
    """The default task's split (1-2 digits): 36 of the 128 test sums and products had their twin, b op a,
    in train (the small 1-digit pool is drawn often, and train all but exhausts it). 9 - 4 and 4 - 9 differ."""
    from sppo_pl.data.arithmetic import with_commuted_twins

    suffix = " Put the final answer within \\boxed{}."
    twins = with_commuted_twins(
        [f"What is 7 + 3?{suffix}", f"What is 9 - 4?{suffix}", f"What is 2 * 5?{suffix}"]
    )
    assert twins == {f"What is {x}?{suffix}" for x in ("7 + 3", "3 + 7", "9 - 4", "2 * 5", "5 * 2")}
    d = arithmetic_splits(4096, 128, seed=0, ops=("+", "-", "*"), min_digits=1, max_digits=2)
    train = set(d["train"]["prompt"])
    assert len(train) == 4096 and not with_commuted_twins(d["test"]["prompt"]) & train


def test_the_whole_space_can_be_drawn():
    # 1-digit '+': 10 x 10 = 100 prompts, all of them reachable
    assert n_distinct_problems(["+"], 1, 1) == 100
    assert n_distinct_problems(["+", "-", "*"], 2, 3) == 3 * (90 + 900) ** 2
    ds = arithmetic_dataset(100, ops=("+",), min_digits=1, max_digits=1)
    assert len(set(ds["prompt"])) == 100


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n must be"):
        arithmetic_dataset(0)
    with pytest.raises(ValueError, match="min_digits"):
        arithmetic_dataset(5, min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="min_digits"):
        arithmetic_dataset(5, min_digits=0, max_digits=2)
    with pytest.raises(ValueError, match="ops"):
        arithmetic_dataset(5, ops=("/",))
    with pytest.raises(ValueError, match="ops"):
        arithmetic_dataset(5, ops=())
    with pytest.raises(ValueError, match="n_train"):
        arithmetic_splits(0, 5)
    with pytest.raises(ValueError, match="n_test"):
        arithmetic_splits(5, 0)


def test_impossible_requests_fail_instead_of_looping():
    with pytest.raises(ValueError, match="could not draw 101 distinct problems"):
        arithmetic_dataset(101, ops=("+",), min_digits=1, max_digits=1)
    # 60 + 50 > 100 possible prompts: train runs out once the test prompts are excluded
    with pytest.raises(ValueError, match="could not draw 60 distinct problems"):
        arithmetic_splits(60, 50, ops=("+",), min_digits=1, max_digits=1)
