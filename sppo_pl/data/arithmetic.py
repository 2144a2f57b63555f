"""Seeded arithmetic problems (+, -, * of 2-3 digit numbers) with the answer asked in ``\\boxed{}``."""

from __future__ import annotations

import random
from collections.abc import Sequence

INSTRUCTION = "Put the final answer within \\boxed{}."
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    d = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10**d - 1)


def make_problem(rng: random.Random, ops: Sequence[str], min_digits: int, max_digits: int) -> dict:
    """One problem: ``{"prompt": "What is a op b? <instruction>", "answer": "<result>"}``."""
    op = rng.choice(list(ops))
    a, b = _operand(rng, min_digits, max_digits), _operand(rng, min_digits, max_digits)
    return {"prompt": f"What is {a} {op} {b}? {INSTRUCTION}", "answer": str(OPS[op](a, b))}


def _check(n: int, ops: Sequence[str], min_digits: int, max_digits: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(
            f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, max_digits={max_digits}"
        )
    bad = [op for op in ops if op not in OPS]
    if bad or not ops:
        raise ValueError(f"ops must be a non-empty subset of {sorted(OPS)}, got {list(ops)}")


def arithmetic_dataset(
    n: int,
    seed: int = 0,
    ops: Sequence[str] = ("+", "-", "*"),
    min_digits: int = 2,
    max_digits: int = 3,
    exclude: set[str] | None = None,
):
    """``n`` distinct problems as a ``datasets.Dataset`` (columns prompt, answer), none of them in ``exclude``."""
    from datasets import Dataset

    _check(n, ops, min_digits, max_digits)
    rng, seen, rows = random.Random(seed), set(exclude or ()), []
    for _ in range(50 * n + 1000):
        row = make_problem(rng, ops, min_digits, max_digits)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
            if len(rows) == n:
                return Dataset.from_list(rows)
    raise ValueError(
        f"could not draw {n} distinct problems with ops={list(ops)}, digits {min_digits}..{max_digits}"
    )


def arithmetic_splits(n_train: int, n_test: int, seed: int = 0, **kw):
    """A ``DatasetDict`` with disjoint ``train`` and ``test`` splits (test drawn first, with seed + 1)."""
    from datasets import DatasetDict

    test = arithmetic_dataset(n_test, seed=seed + 1, **kw)
    train = arithmetic_dataset(n_train, seed=seed, exclude=set(test["prompt"]), **kw)
    return DatasetDict(train=train, test=test)
