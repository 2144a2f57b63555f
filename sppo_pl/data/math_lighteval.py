"""``data=math``: MATH problems prepared as verl's ``examples/data_preprocess/math_dataset.py`` prepares them.

Source ``DigitalLearningGmbH/MATH-lighteval`` (columns problem, level, solution, type; splits train 7,500 and
test 5,000). The prompt is the problem, a space and the instruction "Let's think step by step and output the
final answer within \\boxed{}."; the answer is the content of the solution's last ``\\boxed{}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sppo_pl.data.common import instruction_splits
from sppo_pl.rewards.math import last_boxed

if TYPE_CHECKING:
    from datasets import DatasetDict

SOURCE = "DigitalLearningGmbH/MATH-lighteval"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def boxed_answer(solution: str, where: str, row: int) -> str:
    """The last ``\\boxed{}`` of a reference solution, else an error naming the row."""
    answer = last_boxed(solution) if isinstance(solution, str) else None
    if answer is None:
        raise ValueError(
            f"data: {where} row {row}, field 'solution': no \\boxed{{}} answer in {solution!r:.200}"
        )
    return answer


def math_splits(path: str = SOURCE, instruction: str = INSTRUCTION, name: str | None = None) -> DatasetDict:
    """``train`` / ``test`` with columns prompt, answer, level, type (``path``: hub name or local copy)."""
    return instruction_splits(path, name, "problem", "solution", instruction, boxed_answer)
