"""Answer checking for math-style tasks through math-verify (``parse`` + ``verify``).

The response's final answer is the content of its last ``\\boxed{...}``; without one, the ``fallback`` of
:func:`is_correct` decides: math-verify's own extraction of the whole response, the last number in the text,
or nothing. math-verify is imported lazily so that importing this module stays cheap.

Timeouts: math-verify bounds parsing and comparison with ``signal.alarm``, which only works on the main
thread. There we keep its timeouts; in any other thread they are switched off (``parsing_timeout=None``,
``timeout_seconds=None``). Either way, final answers whose evaluation could explode (power towers such as
``9^{9^{9^9}}``, which make sympy run for ever, exponents >= 10^6, binomials of powers, factorials of large
numbers: :func:`_explosive`), in the response or the gold answer, count as wrong without being parsed, so a
sampled answer can neither hang a worker thread nor stall the main one.
"""

from __future__ import annotations

import logging
import re
import threading

from sppo_pl.rewards.oracle import Oracle
from sppo_pl.rewards.preference import hard_preference

TIMEOUT_S = 5  # math-verify's default, per parse / comparison, on the main thread

# "\boxed{...}" / "\fbox{...}" (group 1: the brace), or the brace-less "\boxed 2" (group 2: the token)
_BOXED = re.compile(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+([^\s${][^\s$]*))")
# "1\,234", "1~234", "1 234": a digit, a thin space / tie / space, then a three-digit group.
_DIGIT_GROUP_SEP = re.compile(r"(?<=\d)(?:\\[,!; ]|~|\s)(?=\d{3}(?!\d))")
# "134,\!568" and "134{,}568": MATH's LaTeX thousands commas, read as the plain comma "134,568"
_LATEX_COMMA = re.compile(r"(?<=\d)(?:,\\!|\{,\})(?=\d{3}(?!\d))")
# Numeric power towers (x^{9^9}, x^9^9, x**9**9), exponents >= 10^6, binomials of powers: sympy may never
# finish evaluating them. Symbolic exponents such as e^{x^2} are left alone.
_EXPLOSIVE = re.compile(
    r"\^\s*\{\s*\d+\s*\^|\^\s*\d+\s*\^|\*\*\s*\d+\s*\*\*|\^\s*\{?\s*\d{7,}|\\binom\s*\{[^{}]*\^"
)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text`` with nested braces handled,
    or None.

    The brace-less ``\\boxed 2`` that some MATH reference solutions write (``$\\boxed 2$``) counts too: its
    content is the token after the space, up to the next space or ``$``, trailing ``.`` or ``,`` dropped, as
    verl's ``last_boxed_only_string`` reads it. None when the last ``\\boxed{`` is never closed (a truncated
    response), as verl's extractor does.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    if last.group(1) is None:
        return last.group(2).rstrip(".,")
    depth = 1
    for j in range(last.end(), len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[last.end() : j]
    return None


def _normalize(answer: str) -> str:
    """Drop digit-group separators math-verify misreads ("1\\,234" would parse as the mixed number 1 + 234);
    MATH's "134,\\!568" and "134{,}568" become "134,568"."""
    return _DIGIT_GROUP_SEP.sub("", _LATEX_COMMA.sub(",", answer.strip()))


def _timeout() -> int | None:
    """math-verify's signal-based timeout only works on the main thread: None (off) elsewhere."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str, timeout: int | None) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)


FALLBACKS = ("math_verify", "last_number", "hash", "none")
MINUS = "\u2212"  # the Unicode minus sign, as models and datasets sometimes write "−5": read as "-"
_NUMBER_PATTERN = r"-?\d[\d,]*(?:\.\d+)?"
_NUMBER = re.compile(_NUMBER_PATTERN)
_NUMERIC_LITERAL = re.compile(rf"\$?{_NUMBER_PATTERN}\$?")
_HASH_NUMBER = re.compile(rf"####\s*\$?({_NUMBER_PATTERN})")


def check_fallback(fallback: str, field: str = "fallback", numeric: bool = False) -> str:
    """``fallback`` if it is one of :data:`FALLBACKS` (and, with ``numeric``, one that yields a number: not
    ``math_verify``, whose text is the whole response), else a ValueError naming ``field``."""
    if fallback not in FALLBACKS:
        raise ValueError(f"{field} must be one of {FALLBACKS}, got {fallback!r}")
    if numeric and fallback == "math_verify":
        raise ValueError(
            f"{field}=math_verify hands math-verify the whole response, which is never a bare number: with "
            "numeric=true (only number literals count) use last_number, hash or none"
        )
    return fallback


def _explosive(text: str) -> bool:
    """True when evaluating ``text`` could run for ever: :data:`_EXPLOSIVE`'s forms, a power whose exponent
    holds a numeric power, a factorial or a 7-digit number (``10^{(10^{10})}``, ``{10}^{{10}^{10}}``,
    ``10^{10 \\cdot 10^{9}}``), or a factorial of a 6-digit number or of a bracket holding a power."""
    if _EXPLOSIVE.search(text) or re.search(r"\d{6,}\s*!", text):
        return True
    for i, c in enumerate(text):
        if c == "^" and _heavy(_operand_after(text, i + 1)):
            return True
        if c == "!" and _heavy(_operand_before(text, i)):
            return True
    return False


def _heavy(operand: str) -> bool:
    """An exponent or factorial argument that may not evaluate: a numeric power (``10^{10}``, ``{10}^9``;
    a symbolic one such as the ``x^2`` of ``e^{x^2}`` is fine), a factorial, or a 7-digit number."""
    return re.search(r"[\d}]\s*(?:\^|\*\*)|!|\d{7,}", operand) is not None


_CLOSE = {"{": "}", "(": ")", "[": "]"}


def _operand_after(text: str, j: int) -> str:
    """The exponent that starts at ``text[j]``: a bracketed group (``\\left(`` included), else one token."""
    j = len(text) - len(text[j:].lstrip())
    if text.startswith("\\left", j):
        j += len("\\left")
    if j < len(text) and text[j] in _CLOSE:
        opening, depth = text[j], 0
        for k in range(j, len(text)):
            depth += (text[k] == opening) - (text[k] == _CLOSE[opening])
            if depth == 0:
                return text[j + 1 : k]
        return text[j + 1 :]
    token = re.match(r"\\?[A-Za-z]+|\d+", text[j:])
    return token.group() if token else ""


def _operand_before(text: str, i: int) -> str:
    """What the factorial at ``text[i]`` applies to: the bracketed group closing just before it, or a number."""
    head = text[:i].rstrip()
    if head and head[-1] in _CLOSE.values():
        closing = head[-1]
        opening = next(o for o, c in _CLOSE.items() if c == closing)
        depth = 0
        for k in range(len(head) - 1, -1, -1):
            depth += (head[k] == closing) - (head[k] == opening)
            if depth == 0:
                return head[k + 1 : -1]
        return head
    number = re.search(r"\d+$", head)
    return number.group() if number else ""


def _final_answer_text(response: str, fallback: str = "math_verify") -> str | None:
    """The text handed to math-verify: ``$<last boxed>$`` if there is a box; otherwise, by ``fallback``,
    the whole response (math-verify's own extraction), ``$<last number in the text>$``, or None. A response
    whose last ``\\boxed{`` never closes (cut off by the token limit) has no final answer whatever the
    fallback: ``\\boxed{12`` of a truncated ``\\boxed{123}`` must not read as 12.

    ``hash`` is GSM8K's format, the number after the last "####" (verl's strict GSM8K check).
    ``last_number`` is the flexible extraction of GSM8K-style scorers; unlike math-verify's extraction of a
    whole response, a response that merely restates the question ("200 - 90 = 10") cannot be read as the
    expression's value.
    """
    response = _LATEX_COMMA.sub(",", response.replace(MINUS, "-"))
    boxed = last_boxed(response)
    if boxed is not None:
        return f"${_normalize(boxed)}$"
    if _BOXED.search(response):  # its last box never closed: the answer was cut off, no fallback reads it
        return None
    if fallback == "math_verify":
        return response
    if fallback == "hash":
        numbers = _HASH_NUMBER.findall(response)
        return f"${numbers[-1]}$" if numbers else None
    numbers = _NUMBER.findall(response) if fallback == "last_number" else []
    return f"${numbers[-1]}$" if numbers else None


def is_correct(response: str, answer: str, fallback: str = "math_verify", numeric: bool = False) -> bool:
    """True iff math-verify finds the response's final answer equal to the gold ``answer``; never raises.

    The final answer is the last ``\\boxed{}``, else what ``fallback`` (one of :data:`FALLBACKS`) finds.
    ``numeric=True`` also requires it to be a number literal, so that an unevaluated expression such as
    ``\\boxed{356 * 378}`` does not count as the product (arithmetic tasks). The gold answer is parsed as
    LaTeX math (``$answer$``). Negative numbers, "1,234"-style thousands and "12.0" == "12" are handled by
    math-verify; empty or unparseable responses are simply wrong.
    """
    from math_verify import verify

    check_fallback(fallback, numeric=numeric)
    try:
        timeout = _timeout()
        text = _final_answer_text(response, fallback)
        if text is None or (numeric and not _NUMERIC_LITERAL.fullmatch(text.replace(" ", ""))):
            return False
        gold_text = "$" + _normalize(str(answer).replace(MINUS, "-")) + "$"
        if _explosive(text) or _explosive(gold_text):
            return False
        pred = _parse(text, timeout)
        gold = _parse(gold_text, timeout)
        return bool(pred) and bool(gold) and bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:
        logging.getLogger(__name__).debug("answer check failed", exc_info=True)
        return False


def correctness_scores(
    responses: list[str], answers: list[str], fallback: str = "math_verify", numeric: bool = False
) -> list[float]:
    """1.0 where the response is correct (:func:`is_correct`), else 0.0; one per (response, answer) pair."""
    if len(responses) != len(answers):
        raise ValueError(f"got {len(responses)} responses but {len(answers)} answers")
    return [1.0 if is_correct(r, a, fallback, numeric) else 0.0 for r, a in zip(responses, answers)]


class MathVerifier(Oracle):
    """Rule-based verifier: 1 if the response's final answer equals the gold answer, else 0.

    The final answer is the last ``\\boxed{}``; without one, ``fallback`` decides ("last_number", "hash",
    "math_verify" or "none", see :func:`is_correct`); ``numeric=True`` accepts only number literals.
    Equivalence is decided by math-verify. Preferences are hard: P(y_i > y_j) = 1{s_i > s_j} + 1/2 1{s_i = s_j}.
    """

    is_verifier = True
    needs_answers = True

    def __init__(self, fallback: str = "last_number", numeric: bool = False):
        self.fallback = check_fallback(fallback, "reward.oracle.fallback", numeric)
        self.numeric = numeric

    def score(self, prompts, responses, answer=None, **fields):
        missing = [i for i, a in enumerate(answer or [None] * len(responses)) if a is None]
        if missing:
            raise ValueError(
                f"reward=math needs an answer for every prompt (data.answer_key); {prompts[missing[0]]!r} has none"
            )
        return correctness_scores(responses, answer, self.fallback, self.numeric)

    def preferences(self, scores):
        return hard_preference(scores)
