"""``data=local``: prompts (and optional answers) from your own files.

A ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file read by ``datasets``; the prompt column holds text or
chat messages (``[{"role": "user", "content": ...}, ...]``, ending with a user turn). Without a ``test``
file, a seeded ``test_size`` rows of ``train`` are held out for validation. Every row is checked when the
run starts: a bad one stops it with the file, the row and the field named. Each row keeps its file and its
row there in hidden columns (:data:`~sppo_pl.data.common.SOURCE_COLUMNS`), for the data module's messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sppo_pl.data.common import check_rows, numbers_as_written, read_file, with_source, with_test_split

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict


def read_prompts(path: str, prompt_key: str, answer_key: str | None) -> Dataset:
    """The file's rows, checked, with the prompt column renamed ``prompt`` and the answer ``answer``, and
    the hidden source columns added. With ``answer_key`` null a column named ``answer`` is left out (prompts
    only); a renaming onto a column the file already has is an error naming both."""
    ds = read_file(path)
    # a JSON answer column of 3 and 3.5: "3", not "3.0"; of 5 and "007": "007"; a prompt column of text and
    # chat messages: the prompt "12345" stays text
    ds = numbers_as_written(ds, path, prompt_key, numbers_as_text=False)
    if answer_key:
        ds = numbers_as_written(ds, path, answer_key)
    check_rows(ds, str(path), prompt_key, answer_key)
    renames = {prompt_key: "prompt", **({answer_key: "answer"} if answer_key else {})}
    renames = {k: v for k, v in renames.items() if k != v}
    for key, new in renames.items():
        if new in ds.column_names and new not in renames:
            field = "prompt_key" if new == "prompt" else "answer_key"
            raise ValueError(
                f"data: {path}: data.dataset.{field}={key!r} is read as the {new!r} column, but the file also "
                f"has a column named {new!r}; rename or drop one of them"
            )
    if not answer_key and "answer" in ds.column_names:
        ds = ds.remove_columns("answer")
    return with_source(ds.rename_columns(renames), path)


def local_splits(
    train: str,
    test: str | None = None,
    prompt_key: str = "prompt",
    answer_key: str | None = "answer",
    test_size: int = 64,
    seed: int = 0,
) -> DatasetDict:
    """``train`` / ``test`` from ``train`` (and ``test``) files; ``answer_key: null`` for prompts only."""
    from datasets import DatasetDict

    splits = {"train": read_prompts(train, prompt_key, answer_key)}
    if test is not None:
        splits["test"] = read_prompts(test, prompt_key, answer_key)
    return with_test_split(DatasetDict(splits), "test", test_size, seed)
