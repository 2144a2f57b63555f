"""Answer checking through math-verify."""

from __future__ import annotations

import threading

import pytest

from sppo_pl.rewards.math import MathVerifier, _explosive, correctness_scores, is_correct, last_boxed


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{71}.", "71"),
        ("a \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box, nested braces
        ("\\boxed{\\sqrt{\\frac{a}{b}} + {c}}", "\\sqrt{\\frac{a}{b}} + {c}"),
        ("spaced \\boxed {7}", "7"),
        ("empty \\boxed{}", ""),
        ("no box here", None),
        ("", None),
        ("\\boxed{12", None),  # truncated: never closed
        ("\\boxed{3} and then \\boxed{4", None),  # the last box is the unfinished one
        # MATH's train/algebra/24014.json and others: a box without braces
        ("so our answer is $\\boxed 2$.", "2"),
        ("$\\boxed \\frac{1}{2}$", "\\frac{1}{2}"),
        ("the answer is \\boxed 14.", "14"),
        ("\\boxed{3}, then \\boxed 5", "5"),
        ("\\boxed 5, then \\boxed{3}", "3"),
        ("\\fbox{9}", "9"),
        ("\\boxed $", None),  # nothing boxed
    ],
)
def test_last_boxed(text, content):
    assert last_boxed(text) == content


@pytest.mark.parametrize(
    ("response", "answer", "ok"),
    [
        ("23 + 48 = 71, so \\boxed{71}.", "71", True),
        ("\\boxed{70}", "71", False),
        ("The result is \\boxed{-12}", "-12", True),
        ("\\boxed{12}", "-12", False),
        ("\\boxed{-12}", "12", False),
        ("\\boxed{1,234}", "1234", True),
        ("\\boxed{1234}", "1,234", True),
        ("\\boxed{1{,}234}", "1234", True),
        ("\\boxed{10000}", "10,\\!000", True),  # a MATH gold answer's thousands comma
        ("\\boxed{1\\,234}", "1234", True),  # thin-space thousands (math-verify alone reads 1 + 234)
        ("\\boxed{1,234,567}", "1234567", True),
        ("\\boxed{12.0}", "12", True),
        ("\\boxed{12.5}", "12", False),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{x = 5}", "5", True),
        ("\\boxed{100000001}", "100000000", False),  # no float rounding of large integers
        ("first \\boxed{3} then corrected \\boxed{4}", "4", True),
        ("first \\boxed{3} then corrected \\boxed{4}", "3", False),
        ("The answer is 42", "42", True),  # no box: math-verify's own extraction
        ("The answer is 41", "42", False),
        ("The answer is \\boxed{}.", "5", False),
        ("", "3", False),
        ("\\boxed{", "3", False),
        ("gibberish }{ \\frac{", "3", False),
        ("\\boxed{\\frac{}{", "3", False),
        ("\\boxed{9^{9^{9^{9}}}}", "5", False),  # would make sympy run for ever
        ("\\boxed{e^{x^2}}", "e^{x^{2}}", True),  # a symbolic exponent is not a numeric tower
    ],
)
def test_is_correct(response, answer, ok):
    assert is_correct(response, answer) is ok


def test_is_correct_never_raises_on_odd_input():
    assert is_correct(None, "3") is False  # type: ignore[arg-type]
    assert is_correct("\\boxed{3}", 3) is True  # type: ignore[arg-type]
    assert is_correct("\\boxed{3}", "") is False


def test_explosive_answers_are_rejected():
    for text in ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2^{99999999}}", "\\boxed{\\binom{10^{9}}{10^{5}}}"]:
        assert is_correct(text, "5") is False


@pytest.mark.parametrize(
    "text",
    [
        r"10^{(10^{10})}",
        r"{10}^{{10}^{10}}",
        r"10^{\left(10^{10}\right)}",
        r"10^{10 \cdot 10^{9}}",
        r"99999999!",
        r"(10^{10})!",
    ],
)
def test_explosive_forms_hidden_in_brackets_are_caught(text):
    """Each of these kept sympy busy for over 30 s off the main thread (no alarm there): found before parsing,
    in the response and in the gold answer."""
    assert _explosive(text) and _explosive(f"${text}$")
    assert is_correct(f"\\boxed{{{text}}}", "5") is False and is_correct("\\boxed{5}", text) is False


@pytest.mark.parametrize(
    "text", [r"e^{x^2}", r"2^{10}", r"\frac{10!}{2^5}", r"1000!", r"(x+1)^2", r"10^{-3}"]
)
def test_ordinary_powers_and_factorials_are_not_explosive(text):
    assert not _explosive(text)


def test_the_unicode_minus_sign_is_a_minus():
    assert is_correct("\\boxed{\u22125}", "-5", fallback="none", numeric=True)
    assert is_correct("The answer is \u22125", "-5", fallback="last_number")
    assert not is_correct("The answer is \u22125", "5", fallback="last_number")
    assert is_correct("#### \u22125", "-5", fallback="hash")
    assert is_correct("\\boxed{-5}", "\u22125")


def test_numeric_answers_need_a_fallback_that_yields_a_number():
    with pytest.raises(
        ValueError, match=r"reward.oracle.fallback=math_verify .* use last_number, hash or none"
    ):
        MathVerifier(fallback="math_verify", numeric=True)
    with pytest.raises(ValueError, match=r"fallback=math_verify hands math-verify the whole response"):
        is_correct("The answer is 5", "5", fallback="math_verify", numeric=True)


def test_reward_math_reads_no_answer_without_a_complete_box_as_verl(tmp_path):
    """conf/reward/math.yaml: a bare trailing digit of LaTeX is no answer; arithmetic keeps the last number."""
    from hydra.utils import instantiate

    from tests.test_config import make_cfg

    math_oracle = instantiate(make_cfg(tmp_path, ["reward=math"]).reward.oracle)
    assert math_oracle.fallback == "none"
    assert math_oracle.score(
        ["q"] * 3, ["So it is $\\frac{3}{4}$.", "\\boxed{12", "\\boxed{4}"], answer=["4"] * 3
    ) == [0.0, 0.0, 1.0]
    assert instantiate(make_cfg(tmp_path, ["reward=arithmetic"]).reward.oracle).fallback == "last_number"


def test_works_outside_the_main_thread():
    """math-verify's signal timeouts only work on the main thread; ours must not depend on them."""
    results: list[object] = []

    def check():
        try:
            results.append([is_correct("\\boxed{71}", "71"), is_correct("\\boxed{70}", "71")])
        except Exception as e:  # pragma: no cover - the failure being tested for
            results.append(e)

    worker = threading.Thread(target=check)
    worker.start()
    worker.join(timeout=60)
    assert results == [[True, False]]


def test_correctness_scores():
    assert correctness_scores(["\\boxed{2}", "\\boxed{3}", ""], ["2", "2", "2"]) == [1.0, 0.0, 0.0]
    assert correctness_scores([], []) == []
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        correctness_scores(["a", "b"], ["1"])


@pytest.mark.parametrize(
    ("response", "answer", "ok"),
    [
        # restating the question is not an answer: math-verify's whole-response extraction would read the
        # expression "200 - 90" as 110, the last number is 10
        ("The final answer is 200 - 90 = 10.", "110", False),
        ("356 * 378 = 123400.", "134568", False),
        ("What is 92 - 41", "51", False),
        ("so 23+48 = 71", "71", True),
        ("99 - 447 = -348", "-348", True),
        ("The answer is 1,234.", "1234", True),
        ("The answer is $134,\\!568$.", "134568", True),  # MATH's LaTeX thousands comma, not 568
        ("no number at all", "3", False),
        ("\\boxed{5} and later 7", "5", True),  # a box wins over later numbers
    ],
)
def test_last_number_fallback(response, answer, ok):
    assert is_correct(response, answer, fallback="last_number") is ok


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        ("\\boxed{134568}", True),
        ("\\boxed{134,568}", True),
        ("\\boxed{134,\\!568}", True),  # MATH's LaTeX thousands commas
        ("\\boxed{134{,}568}", True),
        ("\\boxed{356 * 378}", False),
        ("\\boxed{x = 134568}", False),
    ],
)
def test_numeric_only_rejects_unevaluated_expressions(response, ok):
    assert is_correct(response, "134568", fallback="none", numeric=True) is ok
    assert is_correct("\\boxed{356 * 378}", "134568") is True  # what numeric=True guards against


@pytest.mark.parametrize("fallback", ["math_verify", "last_number", "hash", "none"])
def test_a_box_cut_off_by_the_token_limit_is_no_answer_for_any_fallback(fallback):
    """``\\boxed{12`` is what is left of ``\\boxed{123}`` at the token limit: no fallback may read it as 12."""
    for response in ["So the sum is \\boxed{12", "#### 12 or \\boxed{12", "\\boxed{3} no, \\boxed{12"]:
        assert is_correct(response, "12", fallback=fallback) is False, response
    assert is_correct("\\boxed{12}", "12", fallback=fallback) is True


def test_no_fallback_needs_a_box():
    assert is_correct("The answer is 42", "42", fallback="none") is False
    with pytest.raises(ValueError, match="fallback must be one of"):
        is_correct("42", "42", fallback="guess")
