"""Shared by the prompt sources: reading files through ``datasets``, checking rows, making a test split.

Every error names where the bad input is: the file (or dataset and split), the row (0-based, as
``dataset[i]``; for JSON lines also the line number) and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROLES = ("system", "user", "assistant")


def load_source(path: str, name: str | None = None) -> DatasetDict:
    """``datasets.load_dataset(path, name)``: a hub dataset, or a local copy of one (a folder in the hub
    layout, e.g. ``data/train-00000-of-00001.parquet``)."""
    from datasets import load_dataset

    try:
        return load_dataset(path, name)
    except Exception as e:
        raise ValueError(f"data: could not load dataset {path!r}{f' ({name})' if name else ''}: {e}") from e


def read_file(path: str | Path) -> Dataset:
    """One table from a ``.jsonl``/``.json``, ``.parquet`` or ``.csv`` file, read by ``datasets``."""
    from datasets import load_dataset

    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"data: {path}: unsupported file type {path.suffix!r}, use one of {sorted(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"data: {path} does not exist")
    if FORMATS[path.suffix] == "json":
        _check_json_lines(path)
    try:
        return load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as e:
        raise ValueError(f"data: {path}: could not be read as {path.suffix}: {e}") from e


def _check_json_lines(path: Path) -> None:
    """A JSON-lines file whose every non-blank line is a JSON object, else an error with the line number."""
    with path.open() as f:
        first = f.read(1)
        if first == "[":  # a JSON array file, read as a whole by datasets
            return
        f.seek(0)
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"data: {path} line {n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"data: {path} line {n}: expected a JSON object, got {type(row).__name__}")


def check_columns(ds: Dataset, where: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"data: {where} has no column {missing[0]!r} (columns: {ds.column_names})")


def check_prompt(value: Any, where: str, row: int, field: str) -> str | list[dict]:
    """A prompt: non-empty text, or chat messages (``[{"role": ..., "content": ...}, ...]`` ending with a
    user turn). Anything else is an error naming the row and field."""
    at = f"data: {where} row {row}, field {field!r}"
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{at}: empty prompt")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"{at}: expected text or a list of chat messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{at}: message {i} must be {{'role': one of {ROLES}, 'content': text}}, got {m!r:.120}"
            )
    if value[-1]["role"] != "user" or not value[-1]["content"].strip():
        raise ValueError(f"{at}: the last message must be a non-empty user turn")
    return value


def check_answer(value: Any, where: str, row: int, field: str) -> str | None:
    """An answer as text (numbers are turned into text); None when absent."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(
        f"data: {where} row {row}, field {field!r}: expected text or a number, got {type(value).__name__}"
    )


def check_rows(ds: Dataset, where: str, prompt_key: str, answer_key: str | None) -> None:
    """Every row's prompt and answer, checked (see :func:`check_prompt`, :func:`check_answer`)."""
    check_columns(ds, where, [prompt_key, *([answer_key] if answer_key else [])])
    for i, row in enumerate(ds):
        check_prompt(row[prompt_key], where, i, prompt_key)
        if answer_key:
            check_answer(row[answer_key], where, i, answer_key)


def with_test_split(ds: DatasetDict, test_split: str, test_size: int, seed: int) -> DatasetDict:
    """``train`` and ``test`` splits: the named test split if ``ds`` has one, else ``test_size`` rows held out
    of ``train`` (seeded)."""
    from datasets import DatasetDict

    if test_split in ds:
        return DatasetDict(train=ds["train"], test=ds[test_split])
    if not 1 <= test_size < len(ds["train"]):
        raise ValueError(
            f"data.dataset.test_size={test_size} must be in [1, {len(ds['train'])}) to hold out a test split"
        )
    parts = ds["train"].train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return DatasetDict(train=parts["train"], test=parts["test"])


def map_splits(ds: DatasetDict, source: str, columns: list[str], row_fn) -> DatasetDict:
    """The ``train`` and ``test`` splits of ``ds``, each row mapped by ``row_fn(row, where, index) -> new
    columns``; ``columns`` must exist in both. ``where`` names the source and split for error messages."""
    out = {}
    for split in ("train", "test"):
        if split not in ds:
            raise ValueError(f"data: {source} has no '{split}' split (splits: {list(ds)})")
        where = f"{source} [{split}]"
        check_columns(ds[split], where, columns)
        out[split] = ds[split].map(
            lambda row, i, where=where: row_fn(row, where, i), with_indices=True, desc=where
        )
    return type(ds)(out)
