"""Answer checking through math-verify."""

from __future__ import annotations

import pytest

from sppo_pl.rewards.math import correctness_scores, is_correct, last_boxed


def test_last_boxed():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("no box here") is None
    assert last_boxed("\\boxed{12") is None


@pytest.mark.parametrize(
    ("response", "answer", "ok"),
    [
        ("23 + 48 = 71, so \\boxed{71}.", "71", True),
        ("\\boxed{70}", "71", False),
        ("The result is \\boxed{-12}", "-12", True),
        ("\\boxed{12}", "-12", False),
        ("\\boxed{1,234}", "1234", True),
        ("\\boxed{12.0}", "12", True),
        ("first \\boxed{3} then corrected \\boxed{4}", "4", True),
        ("The answer is 42", "42", True),
        ("The answer is \\boxed{}.", "5", False),
        ("", "3", False),
        ("\\boxed{", "3", False),
        ("gibberish }{ \\frac{", "3", False),
    ],
)
def test_is_correct(response, answer, ok):
    assert is_correct(response, answer) is ok


def test_correctness_scores():
    assert correctness_scores(["\\boxed{2}", "\\boxed{3}"], ["2", "2"]) == [1.0, 0.0]
