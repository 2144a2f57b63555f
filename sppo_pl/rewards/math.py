"""Answer checking for math-style tasks, through math-verify (parse + verify)."""

from __future__ import annotations


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces handled), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def is_correct(response: str, answer: str) -> bool:
    """True iff the response's final answer (its last \\boxed{}, else math-verify's extraction) equals ``answer``."""
    from math_verify import parse, verify

    try:
        boxed = last_boxed(response)
        pred = parse(f"${boxed}$" if boxed is not None else response, parsing_timeout=None)
        gold = parse(f"${answer}$", parsing_timeout=None)
        return bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
    except Exception:
        return False


def correctness_scores(responses: list[str], answers: list[str]) -> list[float]:
    """1.0 / 0.0 per response."""
    return [1.0 if is_correct(r, a) else 0.0 for r, a in zip(responses, answers)]
