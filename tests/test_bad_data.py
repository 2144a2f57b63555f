"""Bad prompt files refused when the run starts, before any model loads, naming the file, the row (or line)
and the key to change; every override a message suggests composes and works as printed."""

from __future__ import annotations

import json
import re

import pytest
from hydra.utils import instantiate

from sppo_pl.data.local import local_splits
from sppo_pl.data.samples import write_jsonl
from sppo_pl.datamodule import SPPODataModule
from sppo_pl.training import build
from tests.test_config import make_cfg, options

NOT_UTF8 = {
    ".jsonl": b'{"prompt": "ok", "answer": "1"}\n{"prompt": "fine", "answer": "2"}\n{"prompt": "caf\xe9"}\n',
    ".json": b'[{"prompt": "ok", "answer": "1"},\n {"prompt": "fine", "answer": "2"},\n {"prompt": "caf\xe9"}]',
    ".csv": b"prompt,answer\nok,1\ncaf\xe9,2\n",
}


@pytest.mark.parametrize("suffix", sorted(NOT_UTF8))
def test_a_file_not_in_utf8_names_the_file_and_line(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(NOT_UTF8[suffix])
    with pytest.raises(ValueError, match=rf"bad{suffix} line 3: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        local_splits(str(path), test_size=1)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.jsonl", "", "empty.jsonl is empty"),
        ("blank.jsonl", "\n  \n", "blank.jsonl is empty"),
        ("empty.csv", "", "empty.csv is empty"),
        ("empty.json", "", "empty.json is empty"),
        ("header.csv", "prompt,answer\n", "header.csv has no rows"),
        ("array.json", "[]", "array.json has no rows"),
        ("zero.parquet", None, "zero.parquet has no rows"),
        (
            "objects.jsonl",
            "{}\n{}\n",
            r"objects.jsonl has no rows \(or only rows without fields, such as \{\}\)",
        ),
    ],
)
def test_an_empty_file_is_named_as_empty(tmp_path, name, text, match):
    from datasets import Dataset

    if text is None:
        Dataset.from_dict({"prompt": []}).to_parquet(str(tmp_path / name))
    else:
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        local_splits(str(tmp_path / name), test_size=1)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bom.jsonl", '{"prompt": "One?", "answer": "1"}\n{"prompt": "Two?", "answer": "2"}\n'),
        ("bom.json", '[{"prompt": "One?", "answer": "1"}, {"prompt": "Two?", "answer": "2"}]'),
    ],
)
def test_a_json_file_saved_with_a_utf8_bom_is_read(tmp_path, name, text):
    """Windows editors save UTF-8 with a BOM; datasets reads such files, so the checks before it must too."""
    path = tmp_path / name
    path.write_bytes(("\ufeff" + text).encode())
    ds = local_splits(str(path), test_size=1, seed=0)
    assert sorted(row["prompt"] for split in ("train", "test") for row in ds[split]) == ["One?", "Two?"]


def test_csv_cells_are_read_as_the_text_written(tmp_path, tiny_tokenizer):
    """A column of numbers with an empty cell stays text ("1", not pandas' "1.0"); "007" keeps its zeros;
    "NA" is an answer, not a missing value; a UTF-8 BOM (Excel's CSV) is not part of the first column's name."""
    path = tmp_path / "answers.csv"
    path.write_bytes("\ufeffprompt,answer\nOne?,1\nCode?,007\nNone?,\nSay NA?,NA\n".encode())
    ds = local_splits(str(path), test_size=1, seed=0)
    read = {row["prompt"]: row["answer"] for split in ("train", "test") for row in ds[split]}
    assert read == {"One?": "1", "Code?": "007", "None?": "", "Say NA?": "NA"}
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, prompts_per_iteration=1)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"answers\.csv row 2: no answer"):  # the empty cell is still missing
        dm.check_answers(MATH)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "prompt,answer\nWhat is 1 + 1?,2\nWhat is 1,000 + 1?,1001\n",
            r"line 3: 3 fields, but the header has 2",
        ),
        ("prompt,answer\nWhat is 1 + 1?\n", r"line 2: 1 fields, but the header has 2"),
        ("prompt,prompt\na?,b?\n", r"column 'prompt' appears twice in the header"),
    ],
)
def test_a_csv_row_that_does_not_fit_its_header_is_named(tmp_path, text, match):
    """pandas would shift a row with one field too many into an index column, silently."""
    path = tmp_path / "rows.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"data: {re.escape(str(path))}:? {match}"):
        local_splits(str(path), test_size=1)


MATH = {
    "_target_": "callbacks.reward.RewardCallback",
    "oracle": {"_target_": "sppo_pl.rewards.math.MathVerifier"},
}


def _long_prompt_file(tmp_path, row: int):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(10)]
    rows[row]["prompt"] = "long " * 200 + "?"
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_an_overlong_prompt_names_the_file_and_its_row_there(tmp_path, tiny_tokenizer):
    path = _long_prompt_file(tmp_path, row=7)
    ds = local_splits(str(path), test_size=3, seed=0)
    split_row = list(ds["train"]["prompt"]).index("long " * 200 + "?")
    assert split_row != 7  # the held-out rows move it: the split's row is not the file's
    with pytest.raises(ValueError, match=rf"data: {re.escape(str(path))} row 7: prompt is \d+ tokens"):
        SPPODataModule(ds, tokenizer=tiny_tokenizer, max_prompt_len=64).setup("fit")


def test_a_source_without_files_names_the_split_row(tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict(
        train=Dataset.from_dict({"prompt": ["short?", "long " * 200 + "?"]}),
        test=Dataset.from_dict({"prompt": ["short?"]}),
    )
    with pytest.raises(ValueError, match=r"data: split 'train' row 1: prompt is \d+ tokens"):
        SPPODataModule(ds, tokenizer=tiny_tokenizer, answer_key=None, max_prompt_len=64).setup("fit")


def test_the_suggested_drop_overlong_override_works_as_printed(tmp_path, tiny_tokenizer):
    path = _long_prompt_file(tmp_path, row=7)
    base = ["data=local", f"data.dataset.train={path}", "data.dataset.test_size=3", "model.max_prompt_len=64"]
    with pytest.raises(ValueError, match=r"\((data\.\S+=\S+) drops such rows\)") as e:
        instantiate(make_cfg(tmp_path, base).data, tokenizer=tiny_tokenizer).setup("fit")
    override = re.search(r"\((data\.\S+=\S+) drops such rows\)", str(e.value)).group(1)
    dm = instantiate(make_cfg(tmp_path, [*base, override]).data, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert len(dm.train_prompts) + len(dm.val_prompts) == 9
    for name in options("data"):  # every data option declares it
        assert make_cfg(tmp_path, [f"data={name}", "data.drop_overlong=true"]).data.drop_overlong is True


ANSWERS = "prompt,answer\nWhat is 1 + 1?,2\nWhat is 2 + 2?,4\nWhat is 3 + 3?,\nWhat is 4 + 4?,8\nWhat is 5 + 5?,10\n"


def _no_answer_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text(ANSWERS)
    return path


@pytest.mark.parametrize("test_size", [1, 3])  # the row without an answer in train, then held out in test
def test_a_prompt_without_an_answer_names_the_file_and_row(tmp_path, tiny_tokenizer, test_size):
    path = _no_answer_csv(tmp_path)
    dm = SPPODataModule(local_splits(str(path), test_size=test_size), tokenizer=tiny_tokenizer)
    dm.setup("fit")
    dm.check_answers({"_target_": "sppo_pl.rewards.function.FunctionOracle", "fn": "x"})  # needs none
    with pytest.raises(ValueError, match=rf"data: {re.escape(str(path))} row 2: no answer, .*MathVerifier"):
        dm.check_answers(MATH)


def test_answers_are_needed_by_every_verifier_and_a_mix_with_one(tmp_path, tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict(  # NaN: a CSV's empty cell in a column of numbers
        train=Dataset.from_dict({"prompt": ["a?", "b?"], "answer": [1.0, float("nan")]}),
        test=Dataset.from_dict({"prompt": ["c?"], "answer": [""]}),
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    needs = {"arithmetic", "combined", "gsm8k", "math"}
    for name in options("reward"):
        extra = {
            "pairwise": ["reward.oracle.model_path=x"],
            "pairrm": ["reward.oracle.model_path=x"],
            "reward_model": ["reward.oracle.model_path=x"],
        }.get(name, [])
        reward = make_cfg(tmp_path, [f"reward={name}", *extra]).reward
        if name in needs:
            with pytest.raises(ValueError, match=r"data: split 'train' row 1: no answer"):
                dm.check_answers(reward)
        else:
            dm.check_answers(reward)
    dm.train_prompts[1]["answer"] = "2"
    with pytest.raises(ValueError, match=r"data: split 'test' row 0: no answer"):
        dm.check_answers(MATH)
    dm.answer_key = None
    with pytest.raises(ValueError, match=r"data.answer_key is null .*, but the reward .*MathVerifier"):
        dm.check_answers(MATH)


def test_build_refuses_a_missing_answer_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    def load_policy(*a, **kw):
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr("sppo_pl.module.load_policy", load_policy)
    path = _no_answer_csv(tmp_path)
    cfg = make_cfg(
        tmp_path,
        [
            "model=local",
            f"model.path={tiny_model_dir}",
            "model.max_prompt_len=64",
            "model.max_response_len=16",
            "trainer.accelerator=cpu",
            "data=local",
            f"data.dataset.train={path}",
            "data.dataset.test_size=1",
            "reward=math",
        ],
    )
    with pytest.raises(ValueError, match=rf"data: {re.escape(str(path))} row 2: no answer"):
        build(cfg)


@pytest.mark.parametrize("array", [False, True])  # JSON lines, or one JSON array of rows
def test_json_answers_are_the_numbers_as_written(tmp_path, tiny_tokenizer, array):
    """datasets reads a JSON column mixing 3 and 3.5 as floats (3 became "3.0"), and 20! (beyond 64 bits) as
    a float that lost its digits ("5.109094217170944e+19": every right response would score wrong)."""
    rows = ['{"prompt": "20! = ?", "answer": 51090942171709440000}', '{"prompt": "1+2?", "answer": 3}']
    rows += ['{"prompt": "7/2?", "answer": 3.50}', '{"prompt": "none?", "answer": null}', '{"prompt": "x?"}']
    rows += ['{"prompt": "sep\u2028arated?", "answer": 2}']  # U+2028 in a string: still one row
    path = tmp_path / ("mixed.json" if array else "mixed.jsonl")
    path.write_text("[" + ",\n".join(rows) + "]" if array else "\n".join(rows) + "\n\n")
    ds = local_splits(str(path), test_size=1, seed=0)
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    answers = {p["prompt"]: p["answer"] for p in [*dm.train_prompts, *dm.val_prompts]}
    assert answers == {
        "20! = ?": "51090942171709440000",
        "1+2?": "3",
        "7/2?": "3.50",
        "none?": None,
        "x?": None,
        "sep\u2028arated?": "2",
    }


@pytest.mark.parametrize("array", [False, True])
def test_a_json_column_mixing_kinds_keeps_the_values_as_written(tmp_path, tiny_tokenizer, array):
    """datasets reads a JSON column mixing numbers and text, or text and chat messages, as Json and decodes
    each text as JSON: "007" became 7, "null" no answer, "[1, 2]" a list (refused), the prompt "12345" an int."""
    chat = [{"role": "user", "content": "Hi?"}]
    rows = [
        {"prompt": "One?", "answer": 5},
        {"prompt": "Code?", "answer": "007"},
        {"prompt": "Word?", "answer": "null"},
        {"prompt": chat, "answer": "[1, 2]"},
        {"prompt": "12345", "answer": "1e3"},
    ]
    path = tmp_path / ("mixed.json" if array else "mixed.jsonl")
    path.write_text(json.dumps(rows) if array else "".join(json.dumps(r) + "\n" for r in rows))
    dm = SPPODataModule(local_splits(str(path), test_size=1, seed=0), tokenizer=tiny_tokenizer)
    dm.setup("fit")
    read = {str(p["prompt"]): p["answer"] for p in [*dm.train_prompts, *dm.val_prompts]}
    assert read == {"One?": "5", "Code?": "007", "Word?": "null", "Hi?": "[1, 2]", "12345": "1e3"}


def test_an_answer_too_long_for_a_float_is_refused_not_rounded(tmp_path):
    """A Parquet file's float column has no digits to recover: 20! stored as a float is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"prompt": ["20! = ?", "1+1?"], "answer": [5.109094217170944e19, 2.0]}), path)
    with pytest.raises(
        ValueError, match=r"big.parquet row 0, field 'answer': the number 5.1\d+e\+19 was read as a float"
    ):
        local_splits(str(path), test_size=1)


@pytest.mark.parametrize(("answer", "kind"), [([1, 2], "list"), (True, "bool")])
def test_answers_of_a_dataset_given_in_python_are_checked_too(tiny_tokenizer, answer, kind):
    """A DatasetDict handed to the data module (not read from a file) had its answers turned into text
    unchecked: [1, 2] became "[1, 2]" and True "True", which no response can match."""
    from datasets import Dataset, DatasetDict

    rows = {"prompt": ["a?", "b?"], "answer": [answer, answer]}
    dm = SPPODataModule(
        DatasetDict(train=Dataset.from_dict(rows), test=Dataset.from_dict(rows)), tiny_tokenizer
    )
    with pytest.raises(
        ValueError, match=rf"split 'train' row 0, field 'answer': expected text or a number, got {kind}"
    ):
        dm.setup("fit")


def test_a_null_answer_key_leaves_the_files_answer_column_out(tmp_path, tiny_tokenizer):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"prompt": f"q{i}?", "answer": {"a": i}} for i in range(3)])
    ds = local_splits(str(path), answer_key=None, test_size=1)
    assert "answer" not in ds["train"].column_names
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert [p["answer"] for p in dm.train_prompts] == [None, None]


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (
            {"answer_key": "solution"},
            r"data.dataset.answer_key='solution' is read as the 'answer' column, but the file",
        ),
        (
            {"prompt_key": "question"},
            r"data.dataset.prompt_key='question' is read as the 'prompt' column, but the file",
        ),
    ],
)
def test_a_key_renamed_onto_a_column_the_file_has_is_named(tmp_path, keys, match):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"prompt": "p?", "question": "q?", "answer": "1", "solution": "2"}] * 2)
    with pytest.raises(ValueError, match=rf"p.jsonl: {match}"):
        local_splits(str(path), test_size=1, **keys)


def test_a_missing_answer_column_is_named_when_a_verifier_needs_it(tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict(train=Dataset.from_dict({"prompt": ["a?"]}), test=Dataset.from_dict({"prompt": ["b?"]}))
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, answer_key="solution")
    dm.setup("fit")
    with pytest.raises(
        ValueError, match=r"split 'train' has no column 'solution' \(data.answer_key\), but the reward"
    ):
        dm.check_answers(MATH)


def test_a_field_json_cannot_keep_is_refused_at_setup_naming_the_row(tmp_path, tiny_tokenizer):
    """A parquet timestamp column in data.fields would only fail when the first iteration's rollouts are saved."""
    import datetime

    from datasets import Dataset

    path = tmp_path / "p.parquet"
    when = [datetime.datetime(2026, 1, 1), datetime.datetime(2026, 1, 2), datetime.datetime(2026, 1, 3)]
    Dataset.from_dict({"prompt": ["a?", "b?", "c?"], "asked": when}).to_parquet(str(path))
    dm = SPPODataModule(
        local_splits(str(path), answer_key=None, test_size=1, seed=0),
        tokenizer=tiny_tokenizer,
        fields=["asked"],
    )
    with pytest.raises(
        ValueError, match=r"p.parquet row \d, field 'asked' \(data.fields\): a datetime cannot be kept"
    ):
        dm.setup("fit")


@pytest.mark.parametrize("value", [0, -1, 10.5, "8"])
def test_max_val_prompts_must_be_null_or_a_whole_number(value):
    with pytest.raises(
        ValueError, match=rf"data.max_val_prompts must be null \(all\) or a whole number >= 1, got {value!r}"
    ):
        SPPODataModule({}, max_val_prompts=value)
