"""What runs write for people and scripts to read: markdown tables of results, and JSONL files written whole."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def markdown_table(head: str, columns: list[str], rows: Iterable[tuple[object, list[float | None]]]) -> str:
    """A markdown table: a header ``| head | column ... |``, then one line ``| label | value ... |`` per
    ``(label, values)`` row, each value to 4 decimals (None: an empty cell)."""
    lines = [f"| {head} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> Path:
    """One JSON object a line, written to ``<path>.tmp`` and renamed onto ``path``: the name only ever holds
    a complete file (an interrupted write leaves the previous one). Returns ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path
