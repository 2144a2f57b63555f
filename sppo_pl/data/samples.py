"""Small local copies of the prompt sources, in each source's real format and hub layout, for the tests and
the recipes' CPU twins (which run where the hub is unreachable). The rows are made up; the columns, file names
and layout are the sources'. Each writer returns the folder to give as ``data.dataset.path``."""

from __future__ import annotations

from pathlib import Path

from sppo_pl.report import write_jsonl_atomic

MATH_ROWS = [
    ("What is $2 + 3$?", "Level 1", "Adding gives $2 + 3 = \\boxed{5}$.", "Prealgebra"),
    (
        "Simplify $\\frac{6}{8}$.",
        "Level 1",
        "Dividing by 2, $\\frac{6}{8} = \\boxed{\\frac{3}{4}}$.",
        "Prealgebra",
    ),
    ("Solve $x + 4 = 10$.", "Level 2", "Subtract 4: $x = \\boxed{6}$.", "Algebra"),
    # as train/algebra/24014.json and a few other MATH solutions write it: a box without braces
    ("What is $3^2$?", "Level 1", "$3^2 = 9$, so the answer is $\\boxed 9$.", "Algebra"),
    ("Compute $\\sqrt{16}$.", "Level 1", "Since $4^2 = 16$, $\\sqrt{16} = \\boxed{4}$.", "Prealgebra"),
    ("What is $10 - 7$?", "Level 1", "$10 - 7 = \\boxed{3}$.", "Prealgebra"),
]
GSM8K_ROWS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A book costs $12. How much do 100 books cost?", "12 * 100 = <<12*100=1200>>1200\n#### 1,200"),
    ("Sara had 10 pens and lost 3. How many are left?", "10 - 3 = <<10-3=7>>7\n#### 7"),
    ("Each box holds 6 eggs. How many eggs are in 5 boxes?", "6 * 5 = <<6*5=30>>30\n#### 30"),
]
ULTRAFEEDBACK_PROMPTS = [
    "Write a haiku about autumn.",
    "Explain what a hash table is to a beginner.",
    "Give three tips for staying focused while studying.",
    "Write a haiku about autumn.",  # the source has duplicate instructions
    "Summarise the plot of a heist movie in two sentences.",
    "What is the difference between weather and climate?",
]


def _parquet(rows: list[dict], path: Path) -> None:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))


def write_math(root: str | Path) -> Path:
    """DigitalLearningGmbH/MATH-lighteval: data/{train,test}-00000-of-00001.parquet, columns problem, level,
    solution, type."""
    root = Path(root)
    rows = [{"problem": p, "level": lv, "solution": s, "type": t} for p, lv, s, t in MATH_ROWS]
    _parquet(rows[:4], root / "data" / "train-00000-of-00001.parquet")
    _parquet(rows[4:], root / "data" / "test-00000-of-00001.parquet")
    return root


def write_gsm8k(root: str | Path) -> Path:
    """openai/gsm8k: README.md declaring the configs, main/{train,test}-00000-of-00001.parquet, columns
    question, answer."""
    root = Path(root)
    rows = [{"question": q, "answer": a} for q, a in GSM8K_ROWS]
    _parquet(rows[:3], root / "main" / "train-00000-of-00001.parquet")
    _parquet(rows[3:], root / "main" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
        "  - split: test\n    path: main/test-*\n---\n"
    )
    return root


def write_ultrafeedback(root: str | Path) -> Path:
    """openbmb/UltraFeedback: one train split, columns source, instruction, models, completions,
    correct_answers, incorrect_answers."""
    root = Path(root)
    rows = [
        {
            "source": "evol_instruct",
            "instruction": p,
            "models": ["model-a", "model-b"],
            "completions": [
                {"model": "model-a", "response": "A first answer.", "overall_score": 7.0},
                {"model": "model-b", "response": "A second answer.", "overall_score": 6.5},
            ],
            "correct_answers": ["None"],
            "incorrect_answers": ["None"],
        }
        for p in ULTRAFEEDBACK_PROMPTS
    ]
    _parquet(rows, root / "data" / "train-00000-of-00001.parquet")
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl_atomic(path, rows)
