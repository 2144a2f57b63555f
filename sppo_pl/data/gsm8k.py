"""``data=gsm8k``: grade-school math prepared as verl's ``examples/data_preprocess/gsm8k.py`` prepares it.

Source ``openai/gsm8k`` (config ``main``; columns question, answer; splits train 7,473 and test 1,319). The
prompt is the question, a space and the instruction 'Let's think step by step and output the final answer
after "####".'; the answer is the number after the reference's "####", commas removed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sppo_pl.data.common import instruction_splits

if TYPE_CHECKING:
    from datasets import DatasetDict

SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
_HASH_ANSWER = re.compile(r"####\s*(-?[0-9.,]*[0-9][0-9.,]*)")  # a number: at least one digit


def hash_answer(text: str, where: str, row: int) -> str:
    """The number after the last "####" of a GSM8K reference answer, commas removed."""
    found = _HASH_ANSWER.findall(text) if isinstance(text, str) else []
    if not found:
        raise ValueError(f"data: {where} row {row}, field 'answer': no '#### <number>' in {text!r:.200}")
    return found[-1].replace(",", "").rstrip(".")


def gsm8k_splits(
    path: str = SOURCE, name: str | None = "main", instruction: str = INSTRUCTION
) -> DatasetDict:
    """``train`` / ``test`` with columns prompt, answer (``path``: hub name or local copy)."""
    return instruction_splits(path, name, "question", "answer", instruction, hash_answer)
