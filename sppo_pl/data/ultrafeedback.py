"""``data=ultrafeedback``: UltraFeedback prompts only, the prompt source of the original uclaml/SPPO.

Source ``openbmb/UltraFeedback`` (one ``train`` split of about 64k rows; the prompt is ``instruction``; the
rated completions are not used: SPPO samples its own). A seeded ``test_size`` rows are held out for
validation. ``HuggingFaceH4/ultrafeedback_binarized`` works too: ``prompt_column=prompt
train_split=train_prefs test_split=test_prefs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sppo_pl.data.common import SOURCE_COLUMNS, check_columns, load_source, with_test_split

if TYPE_CHECKING:
    from datasets import DatasetDict

SOURCE = "openbmb/UltraFeedback"


def ultrafeedback_splits(
    path: str = SOURCE,
    prompt_column: str = "instruction",
    train_split: str = "train",
    test_split: str = "test",
    test_size: int = 500,
    seed: int = 0,
) -> DatasetDict:
    """``train`` / ``test`` with the one column ``prompt`` (duplicate prompts dropped, first kept), each row
    knowing its source split and row there (hidden :data:`SOURCE_COLUMNS`), which error messages name."""
    from datasets import Dataset, DatasetDict

    ds = load_source(path)
    if train_split not in ds:
        raise ValueError(f"data: {path} has no '{train_split}' split (splits: {list(ds)})")
    splits = {"train": ds[train_split], **({test_split: ds[test_split]} if test_split in ds else {})}
    out = {}
    for name, split in splits.items():
        check_columns(split, f"{path} [{name}]", [prompt_column])
        first: dict = {}  # each prompt's first row
        for i, prompt in enumerate(split[prompt_column]):
            first.setdefault(prompt, i)
        file_column, row_column = SOURCE_COLUMNS
        where = [f"{path} [{name}]"] * len(first)
        out[name] = Dataset.from_dict(
            {"prompt": list(first), file_column: where, row_column: list(first.values())}
        )
    return with_test_split(DatasetDict(out), test_split, test_size, seed)
