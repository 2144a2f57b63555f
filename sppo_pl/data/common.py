"""Shared by the prompt sources: reading files through ``datasets``, checking rows, making a test split.

Every error names where the bad input is: the file (or dataset and split), the row (0-based, as
``dataset[i]``; the line number for a fault in a text file's bytes or JSON lines) and the field. Rows read
from a file carry its name and their row there in hidden columns (:func:`with_source`), so the data module's
later checks name the file's row, not the row of the split a seeded test split left it at.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROLES = ("system", "user", "assistant")
SOURCE_COLUMNS = ("__source_file", "__source_row")  # hidden: each row's file and its row there
FLOATS = ("float16", "float32", "float64")


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
    if path.stat().st_size == 0:
        raise ValueError(f"data: {path} is empty")
    if path.suffix != ".parquet":
        _check_text(path)
    options = _csv_as_text(path) if path.suffix == ".csv" else {}
    try:
        return load_dataset(FORMATS[path.suffix], data_files=str(path), split="train", **options)
    except Exception as e:
        if "corresponds to no data" in str(e):  # datasets' words for a table without rows
            raise ValueError(f"data: {path} has no rows (or only rows without fields, such as {{}})") from e
        raise ValueError(f"data: {path}: could not be read as {path.suffix}: {_reason(e)}") from e


def numbers_as_written(ds: Dataset, path: str | Path, key: str, numbers_as_text: bool = True) -> Dataset:
    """``ds`` read from the JSON file ``path``, its column ``key`` replaced by the values written in the file,
    every number as its text, where ``datasets`` changed them:

    - a column mixing 3 and 3.5 is read as floats (3 became "3.0"), a whole number beyond 64 bits as a float
      that lost its digits;
    - a column mixing kinds (numbers and text, text and chat messages) is read as ``Json``, which decodes
      each text as JSON: "007" became 7, "null" None, "[1, 2]" a list.

    ``numbers_as_text=False`` keeps a number a number (a prompt must be text: 7 stays 7, to be refused).
    Other files and columns (text, whole numbers) are returned as they are."""
    from datasets import Json

    path = Path(path)
    feature = ds.features.get(key)
    mixed = isinstance(feature, Json)
    if FORMATS.get(path.suffix) != "json" or not (mixed or getattr(feature, "dtype", None) in FLOATS):
        return ds
    values = json_values_as_written(path, key, numbers_as_text)
    if len(values) != len(ds):  # not rows as datasets reads them: leave them to its reading
        return ds
    if mixed:  # a Json column holds each value JSON-encoded
        values, kind = [json.dumps(v) for v in values], {"feature": feature}
    else:
        kind = {}
    new = f"{key}.as_written"  # added before the old column goes: a table of no columns has no rows
    return ds.add_column(new, values, **kind).remove_columns(key).rename_column(new, key)


def json_values_as_written(path: Path, key: str, numbers_as_text: bool = True) -> list:
    """Each row's ``key`` (None where absent) in a JSON-lines file, or a JSON file holding an array of rows,
    every number as the text written for it (``3``, ``3.50``, ``51090942171709440000``), or as a number."""
    text = path.read_text(encoding="utf-8-sig")
    as_text = {"parse_int": str, "parse_float": str} if numbers_as_text else {}
    if text.lstrip().startswith("["):
        rows = json.loads(text, **as_text)
    else:  # split on newlines alone: a JSON string may hold U+2028, which str.splitlines would split on
        rows = [json.loads(line, **as_text) for line in text.split("\n") if line.strip()]
    return [row.get(key) if isinstance(row, dict) else None for row in rows]


def _csv_as_text(path: Path) -> dict:
    """``load_dataset`` options that read every CSV cell as the text written there: an answer ``007`` stays
    ``"007"``, ``1`` stays ``"1"`` even with an empty cell in its column (pandas would make the column floats:
    ``"1.0"``), ``NA`` is not a missing value and an empty cell is ``""``. The file is read here first (a UTF-8
    BOM skipped): an unnamed column is named as pandas names it; a name given twice, or a row with more or
    fewer fields than the header (pandas would shift it silently), is an error naming it."""
    import csv

    from datasets import Features, Value

    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        for row in rows:
            if row and len(row) != len(header):
                raise ValueError(
                    f"data: {path} line {rows.line_num}: {len(row)} fields, but the header has {len(header)}"
                    " (quote a field that holds a comma)"
                )
    names = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise ValueError(f"data: {path}: column {twice[0]!r} appears twice in the header")
    return {"features": Features({name: Value("string") for name in names}), "keep_default_na": False}


def _reason(e: BaseException) -> str:
    """An error's message and its root cause's (``datasets`` wraps the parser's error in its own)."""
    root = e
    while (cause := root.__cause__ or root.__context__) is not None:
        root = cause
    return ": ".join(str(x) or type(x).__name__ for x in dict.fromkeys((e, root)))


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines as text, numbered from 1, a UTF-8 BOM before the first skipped (as ``datasets`` skips
    it); a byte that is not UTF-8 is an error naming its line."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"data: {path} line {n}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1});"
                    " save the file as UTF-8"
                ) from None


def _check_text(path: Path) -> None:
    """A ``.jsonl``/``.json``/``.csv`` file: UTF-8 throughout, not blank, and (JSON lines) every non-blank line
    a JSON object; else an error with the line number. A JSON array file is read as a whole by datasets."""
    json_lines, blank = FORMATS[path.suffix] == "json", True
    for n, line in _utf8_lines(path):
        if not line.strip():
            continue
        json_lines = json_lines and not (blank and line.lstrip().startswith("["))
        blank = False
        if json_lines:
            _check_json_line(path, n, line)
    if blank:
        raise ValueError(f"data: {path} is empty")


def _check_json_line(path: Path, n: int, line: str) -> None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"data: {path} line {n}: not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise ValueError(f"data: {path} line {n}: expected a JSON object, got {type(row).__name__}")


def with_source(ds: Dataset, path: str | Path) -> Dataset:
    """``ds`` with the hidden :data:`SOURCE_COLUMNS`: the file and each row's row in it (see :func:`locate`)."""
    file, row = SOURCE_COLUMNS
    return ds.add_column(file, [str(path)] * len(ds)).add_column(row, list(range(len(ds))))


def locate(row: dict, split: str, i: int) -> tuple[str, int]:
    """Where row ``i`` of ``split`` came from, for messages: (its file, its row there) when the source
    recorded them (:func:`with_source`), else (``"split 'train'"``, ``i``)."""
    file, n = SOURCE_COLUMNS
    return (row[file], row[n]) if file in row else (f"split '{split}'", i)


def check_columns(ds: Dataset, where: str, columns: list[str], hint: str = "") -> None:
    """Each of ``columns`` is in ``ds``, else an error naming the first missing one (and ``hint``)."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        shown = [c for c in ds.column_names if c not in SOURCE_COLUMNS]
        raise ValueError(f"data: {where} has no column {missing[0]!r} (columns: {shown}){hint}")


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
    """An answer as text (numbers are turned into text); None when absent (None, or NaN: an empty CSV cell)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**53:
        raise ValueError(
            f"data: {where} row {row}, field {field!r}: the number {value!r} was read as a float, which cannot hold "
            "all its digits (a whole number beyond 2**53, or beyond 64 bits in JSON); write it as a string"
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(
        f"data: {where} row {row}, field {field!r}: expected text or a number, got {type(value).__name__}"
    )


def check_rows(ds: Dataset, where: str, prompt_key: str, answer_key: str | None) -> None:
    """Every row's prompt and answer, checked (see :func:`check_prompt`, :func:`check_answer`). A missing
    column is an error naming the setting that picks it."""
    check_columns(ds, where, [prompt_key], ": set data.dataset.prompt_key=<column>")
    if answer_key:
        prompts_only = ", or data.dataset.answer_key=null for prompts only (a model oracle)"
        check_columns(ds, where, [answer_key], f": set data.dataset.answer_key=<column>{prompts_only}")
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
    return DatasetDict(train=without_prompts_of(parts["train"], parts["test"]), test=parts["test"])


def _prompt_key(prompt: str | list[dict]) -> str:
    """A hashable key of a prompt, text or chat messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def without_prompts_of(train: Dataset, test: Dataset) -> Dataset:
    """``train`` less its rows whose prompt a ``test`` row holds too: a file that repeats a prompt would
    otherwise train on some of the prompts it evaluates on. Warns with the number left out."""
    held_out = {_prompt_key(p) for p in test["prompt"]}
    keep = [i for i, p in enumerate(train["prompt"]) if _prompt_key(p) not in held_out]
    if len(keep) == len(train):
        return train
    if not keep:
        raise ValueError("data: every training row repeats a prompt of the held-out test split")
    logging.getLogger(__name__).warning(
        "data: %d training rows repeat a prompt of the held-out test split and are left out of training",
        len(train) - len(keep),
    )
    return train.select(keep)


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


def instruction_splits(
    path: str, name: str | None, question: str, answer: str, instruction: str, extract
) -> DatasetDict:
    """The ``train`` and ``test`` splits of a hub math source (``path``: hub name or local copy) as verl's
    preprocessing makes them: ``prompt`` is the ``question`` column, a space and ``instruction``; ``answer``
    is ``extract(row[answer], where, index)``, the final answer of the reference."""
    return map_splits(
        load_source(path, name),
        path,
        [question, answer],
        lambda row, where, i: {
            "prompt": f"{row[question]} {instruction}",
            "answer": extract(row[answer], where, i),
        },
    )
