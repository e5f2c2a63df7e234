"""Pairwise preferences for reward-model training (``algorithm: rm``): an Evaluation's ``preferences.jsonl`` (or a
parquet file with the same columns) staged as parquet, each of ``prompt``, ``chosen`` and ``rejected`` a list of chat
messages (TRL's conversational preference form) or a plain string, kept as JSON text so any shape stays one schema.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLUMNS = ("prompt", "chosen", "rejected")


def _messages(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    msg = f"{where}: expected a string or a list of {{role, content}} messages, got {type(value).__name__}"
    raise ValueError(msg)


def check_pair(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(COLUMNS)}")
    missing = [c for c in COLUMNS[1:] if c not in row]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (a preference pair needs chosen and rejected)")
    return {c: _messages(row.get(c, []), f"{where}: {c}") for c in COLUMNS}


def read_pairs(path: Path, *, label: str) -> list[dict[str, Any]]:
    """The pairs of a JSONL or parquet file, checked; a bad row is named by file and line."""
    if path.suffix == ".parquet" or path.read_bytes()[:4] == b"PAR1":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        decoded = [
            {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in r.items()} for r in rows
        ]
        return [check_pair(row, f"{label} row {index}") for index, row in enumerate(decoded)]
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{label} line {number}: not JSON ({error})") from error
            pairs.append(check_pair(row, f"{label} line {number}"))
    return pairs


def write_pairs_parquet(pairs: list[dict[str, Any]], dest: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not pairs:
        raise ValueError(f"no preference pairs to train on ({dest.name} would be empty)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: [json.dumps(p[c], ensure_ascii=False) for p in pairs] for c in COLUMNS})
    pq.write_table(table, dest)
    return dest


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """The staged parquet back as pairs."""
    return read_pairs(path, label=str(path))


def toy_preferences(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A separable toy preference set: the chosen answer is digits, the rejected one letters."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        digits = str(a + b) + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 3)))
        letters = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 5)))
        prompt = [{"role": "user", "content": f"{a}+{b}?"}]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": digits}],
                "rejected": [{"role": "assistant", "content": letters}],
            }
        )
    return pairs
