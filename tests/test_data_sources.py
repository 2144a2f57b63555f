"""Prompt sources read through ``datasets`` from local copies in each source's real format, and the errors a
malformed file or row gives (file, row and field named)."""

from __future__ import annotations

import json

import pytest

from sppo_pl.data.common import SOURCE_COLUMNS
from sppo_pl.data.gsm8k import INSTRUCTION as GSM8K_INSTRUCTION
from sppo_pl.data.gsm8k import gsm8k_splits
from sppo_pl.data.local import local_splits
from sppo_pl.data.math_lighteval import INSTRUCTION as MATH_INSTRUCTION
from sppo_pl.data.math_lighteval import math_splits
from sppo_pl.data.samples import write_gsm8k, write_jsonl, write_math, write_ultrafeedback
from sppo_pl.data.ultrafeedback import ultrafeedback_splits
from sppo_pl.datamodule import SPPODataModule
from sppo_pl.rewards.math import is_correct


def test_math_as_verl_prepares_it(tmp_path):
    ds = math_splits(str(write_math(tmp_path / "math")))
    assert (len(ds["train"]), len(ds["test"])) == (4, 2)
    row = ds["train"][1]
    assert row["prompt"] == "Simplify $\\frac{6}{8}$. " + MATH_INSTRUCTION
    assert row["answer"] == "\\frac{3}{4}" and row["level"] == "Level 1" and row["type"] == "Prealgebra"
    assert MATH_INSTRUCTION == "Let's think step by step and output the final answer within \\boxed{}."
    assert is_correct("so it is \\boxed{0.75}", row["answer"])  # the answer math-verify checks against
    assert ds["train"][3]["answer"] == "9"  # from "$\\boxed 9$", a box without braces


def test_math_solution_without_a_box_names_the_row(tmp_path):
    from datasets import Dataset

    root = write_math(tmp_path / "math")
    bad = [{"problem": "p", "level": "Level 1", "solution": "no box here", "type": "Algebra"}] * 2
    Dataset.from_list(bad).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"math \[test\] row 0, field 'solution': no \\boxed\{\} answer"):
        math_splits(str(root))


def test_gsm8k_as_verl_prepares_it(tmp_path):
    ds = gsm8k_splits(str(write_gsm8k(tmp_path / "gsm8k")))
    assert (len(ds["train"]), len(ds["test"])) == (3, 1)
    assert list(ds["train"]["answer"]) == ["7", "1200", "7"]  # after "####", commas removed
    assert ds["train"][0]["prompt"].endswith(" " + GSM8K_INSTRUCTION)
    assert GSM8K_INSTRUCTION == 'Let\'s think step by step and output the final answer after "####".'
    assert is_correct("3 + 4 = 7 apples.\n#### 7", "7", fallback="hash")
    assert not is_correct("#### 8, not 7", "7", fallback="hash")
    assert is_correct("#### 1,200", "1200", fallback="hash")


def test_ultrafeedback_prompts_only_with_a_held_out_split(tmp_path):
    ds = ultrafeedback_splits(str(write_ultrafeedback(tmp_path / "uf")), test_size=2, seed=0)
    shown = [[c for c in ds[s].column_names if c not in SOURCE_COLUMNS] for s in ("train", "test")]
    assert shown == [["prompt"], ["prompt"]]
    prompts = list(ds["train"]["prompt"]) + list(ds["test"]["prompt"])
    assert len(prompts) == 5 == len(set(prompts))  # the duplicate instruction is gone, none is lost
    again = ultrafeedback_splits(str(tmp_path / "uf"), test_size=2, seed=0)
    assert list(again["test"]["prompt"]) == list(ds["test"]["prompt"])  # seeded
    with pytest.raises(ValueError, match="test_size=9 must be in \\[1, 5\\)"):
        ultrafeedback_splits(str(tmp_path / "uf"), test_size=9)


def test_an_ultrafeedback_row_is_named_by_its_row_in_the_source(tmp_path, tiny_tokenizer):
    """Deduplicated and shuffled, a bad instruction is still named by its split and row in the source."""
    from datasets import Dataset, load_dataset

    root = write_ultrafeedback(tmp_path / "uf")
    parquet = root / "data" / "train-00000-of-00001.parquet"
    rows = load_dataset("parquet", data_files=str(parquet))["train"].to_list()
    rows[4]["instruction"] = "   "  # after the duplicate at row 3
    Dataset.from_list(rows).to_parquet(str(parquet))
    dm = SPPODataModule(ultrafeedback_splits(str(root), test_size=1, seed=0), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"uf \[train\] row 4, field 'prompt': empty prompt"):
        dm.setup("fit")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files_in_every_format(tmp_path, suffix):
    from datasets import Dataset

    rows = [{"question": f"What is {i} + {i}?", "solution": 2 * i} for i in range(6)]
    path = tmp_path / f"train{suffix}"
    {
        ".jsonl": lambda: write_jsonl(path, rows),
        ".parquet": lambda: Dataset.from_list(rows).to_parquet(str(path)),
    }.get(suffix, lambda: Dataset.from_list(rows).to_csv(str(path), index=False))()
    ds = local_splits(str(path), prompt_key="question", answer_key="solution", test_size=2)
    assert (len(ds["train"]), len(ds["test"])) == (4, 2)
    assert set(ds["train"].column_names) == {"prompt", "answer", *SOURCE_COLUMNS}


def test_local_chat_messages_go_through_the_chat_template(tmp_path, tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": messages, "answer": "4"}] * 3)
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "What is 1 + 1?", "answer": 2}])
    dm = SPPODataModule(
        local_splits(str(train), str(test)), tokenizer=tiny_tokenizer, prompts_per_iteration=3
    )
    dm.setup("fit")
    row = dm.train_prompts[0]
    want = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tiny_tokenizer.decode(row["prompt_ids"]) == want
    assert row["prompt"] == "What is 2 + 2?" and dm.val_prompts[0]["answer"] == "2"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"prompt": "ok", "answer": "1"}\n{"prompt": "broken", \n', r"bad.jsonl line 2: not valid JSON"),
        ('{"prompt": "ok"}\n["a list"]\n', r"bad.jsonl line 2: expected a JSON object"),
        ('{"prompt": "ok"}\n{"prompt": ""}\n', r"bad.jsonl row 1, field 'prompt': empty prompt"),
        (
            '{"prompt": "ok"}\n{"prompt": 7}\n',
            r"bad.jsonl row 1, field 'prompt': expected text or a list of chat",
        ),
        (
            '{"prompt": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n',
            r"bad.jsonl row 0, field 'prompt': message 1 must be",
        ),
        (
            '{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n',
            r"bad.jsonl row 0, field 'prompt': the last message must be a non-empty user turn",
        ),
        ('{"prompt": "ok", "answer": [1]}\n', r"bad.jsonl row 0, field 'answer': expected text or a number"),
        ('{"text": "ok"}\n', r"bad.jsonl has no column 'prompt' \(columns: \['text'\]\)"),
    ],
)
def test_malformed_local_file_names_file_row_and_field(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(line)
    with pytest.raises(ValueError, match=match):
        local_splits(str(path), answer_key="answer" if "answer" in line else None, test_size=1)


def test_a_missing_column_names_the_setting_that_picks_it(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "Write a haiku."}\n{"text": "Name a colour."}\n')
    with pytest.raises(ValueError, match=r"no column 'prompt' .*: set data.dataset.prompt_key=<column>$"):
        local_splits(str(path), test_size=1)
    with pytest.raises(
        ValueError, match=r"no column 'answer' .*answer_key=<column>, or data.dataset.answer_key=null"
    ):
        local_splits(str(path), prompt_key="text", test_size=1)
    assert local_splits(str(path), prompt_key="text", answer_key=None, test_size=1).num_rows == {
        "train": 1,
        "test": 1,
    }


def test_missing_or_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        local_splits(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'"):
        local_splits(str(tmp_path / "prompts.txt"))
    with pytest.raises(ValueError, match="could not load dataset"):
        math_splits(str(tmp_path / "no-such-dataset"))


def test_overlong_prompts_are_dropped_when_asked(tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict(
        train=Dataset.from_dict({"prompt": ["short?", "long " * 200 + "?"]}),
        test=Dataset.from_dict({"prompt": ["short?"]}),
    )
    dm = SPPODataModule(ds, tokenizer=tiny_tokenizer, answer_key=None, max_prompt_len=64, drop_overlong=True)
    dm.setup("fit")
    assert [p["prompt"] for p in dm.train_prompts] == ["short?"]
    with pytest.raises(ValueError, match="data.drop_overlong=true drops such rows"):
        SPPODataModule(ds, tokenizer=tiny_tokenizer, answer_key=None, max_prompt_len=64).setup("fit")


def test_a_prompt_the_held_out_split_holds_is_not_trained_on(tmp_path, caplog):
    """A local file that repeats its prompts: the rows of a held-out prompt leave the training split."""
    path = tmp_path / "twice.jsonl"
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(10)] * 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        ds = local_splits(str(path), test_size=4, seed=0)
    test = set(ds["test"]["prompt"])
    assert len(ds["test"]) == 4 and not test & set(ds["train"]["prompt"])
    assert len(ds["train"]) == 20 - 2 * len(test)  # both rows of each held-out prompt left training
    assert "repeat a prompt of the held-out test split" in caplog.text


def test_a_gsm8k_reference_without_a_number_after_the_hashes_names_its_row():
    """A reference ending "#### ." or "#### -," read as the answer "" or "-": it must hold a digit."""
    from sppo_pl.data.gsm8k import hash_answer

    assert hash_answer("So 3 + 4 = 7.\n#### 7.", "gsm8k [train]", 0) == "7"
    assert hash_answer("#### -1,234.5", "gsm8k [train]", 0) == "-1234.5"
    for text in ("#### .", "#### -,"):
        with pytest.raises(ValueError, match=r"gsm8k \[train\] row 3, field 'answer': no '#### <number>'"):
            hash_answer(text, "gsm8k [train]", 3)
