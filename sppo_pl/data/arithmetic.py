"""Seeded arithmetic problems (``a op b`` with op in +, -, *), the answer asked for in ``\\boxed{}``.

The default CPU task: small instruct models get a few of these right when sampled, so SPPO has room to
improve them, and :func:`sppo_pl.rewards.math.is_correct` checks the answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

INSTRUCTION = "Put the final answer within \\boxed{}."
OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
MAX_DRAWS_PER_PROBLEM = 50  # rejection-sampling budget: 50 n + 1000 draws before giving up


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    """A non-negative integer of d digits, d uniform in [min_digits, max_digits] (1 digit includes 0)."""
    d = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)


def make_problem(rng: random.Random, ops: Sequence[str], min_digits: int, max_digits: int) -> dict:
    """One problem: ``{"prompt": "What is a op b? <INSTRUCTION>", "answer": str(a op b)}``.

    Each operand draws its own digit count in [min_digits, max_digits].
    """
    op = rng.choice(list(ops))
    a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
    return {"prompt": f"What is {a} {op} {b}? {INSTRUCTION}", "answer": str(OPS[op](a, b))}


def _check_count(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


def _check_space(ops: Sequence[str], min_digits: int, max_digits: int) -> None:
    if not 1 <= min_digits <= max_digits:
        raise ValueError(
            f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, max_digits={max_digits}"
        )
    if isinstance(ops, str) or not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty list drawn from {sorted(OPS)}, got {ops!r}")


def n_distinct_problems(ops: Iterable[str], min_digits: int, max_digits: int) -> int:
    """How many distinct prompts the generator can produce: |ops| * (number of operands)^2."""
    operands = sum(10 if d == 1 else 9 * 10 ** (d - 1) for d in range(min_digits, max_digits + 1))
    return len(set(ops)) * operands**2


def arithmetic_dataset(
    n: int,
    seed: int = 0,
    ops: Sequence[str] = ("+", "-", "*"),
    min_digits: int = 2,
    max_digits: int = 3,
    exclude: set[str] | None = None,
) -> Dataset:
    """``n`` distinct problems as a ``datasets.Dataset`` with columns ``prompt`` and ``answer``.

    Deterministic in ``seed``. Problems whose prompt is in ``exclude`` are skipped (to keep a test split out
    of train). Raises ValueError when ``n`` distinct problems cannot be drawn from the requested space.
    """
    from datasets import Dataset

    _check_count("n", n)
    _check_space(ops, min_digits, max_digits)
    capacity = n_distinct_problems(ops, min_digits, max_digits)
    if n > capacity:
        raise ValueError(
            f"could not draw {n} distinct problems: ops={list(ops)} with {min_digits}..{max_digits} digit "
            f"operands give only {capacity}; lower n or widen ops / max_digits"
        )
    rng, seen, rows = random.Random(seed), set(exclude or ()), []
    for _ in range(MAX_DRAWS_PER_PROBLEM * n + 1000):
        row = make_problem(rng, ops, min_digits, max_digits)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
            if len(rows) == n:
                return Dataset.from_list(rows)
    raise ValueError(
        f"could not draw {n} distinct problems with ops={list(ops)}, digits {min_digits}..{max_digits} "
        f"and {len(exclude or ())} excluded prompts (found {len(rows)}); lower n or widen ops / max_digits"
    )


def arithmetic_splits(n_train: int, n_test: int, seed: int = 0, **kw) -> DatasetDict:
    """A ``DatasetDict`` with disjoint ``train`` and ``test`` splits.

    The test split is drawn first (seed + 1); train (seed) excludes its prompts and, for ``+`` and ``*``,
    their commuted twins (``7 + 3`` keeps ``3 + 7`` out of train: the same sum). ``kw`` goes to
    :func:`arithmetic_dataset` (ops, min_digits, max_digits).
    """
    from datasets import DatasetDict

    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    test = arithmetic_dataset(n_test, seed=seed + 1, **kw)
    train = arithmetic_dataset(n_train, seed=seed, exclude=with_commuted_twins(test["prompt"]), **kw)
    return DatasetDict(train=train, test=test)


COMMUTATIVE = ("+", "*")


def with_commuted_twins(prompts: Iterable[str]) -> set[str]:
    """The ``prompts`` (:func:`make_problem`'s) and, for ``+`` and ``*``, each one with its operands swapped."""
    out = set()
    for prompt in prompts:
        out.add(prompt)
        head, rest = prompt.split("? ", 1)
        a, op, b = head.removeprefix("What is ").split(" ")
        if op in COMMUTATIVE:
            out.add(f"What is {b} {op} {a}? {rest}")
    return out
