"""Task files (JSONL: id, prompt, ground_truth, metadata) to verl's RL parquet schema, split train/validation.

Each output row: ``data_source``, ``prompt`` (chat list), ``ability``, ``reward_model {style, ground_truth}``,
``extra_info {index, split, id, metadata}`` (verl/utils/dataset/rl_dataset.py, examples/data_preprocess/gsm8k.py).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASK_KEYS = frozenset({"id", "prompt", "ground_truth", "metadata"})
REQUIRED_KEYS = ("id", "prompt", "ground_truth")
CHAT_ROLES = frozenset({"system", "user", "assistant"})
TRAIN_FILE = "train.parquet"
VALIDATION_FILE = "validation.parquet"


class DatasetError(ValueError):
    """The task file has malformed rows; ``problems`` lists each as ``file:line: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Task:
    line: int
    id: str
    prompt: list[dict[str, str]]
    ground_truth: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SplitSummary:
    train: Path
    validation: Path
    train_rows: int
    validation_rows: int


def _prompt_messages(value: Any) -> list[dict[str, str]] | str:
    """The prompt as a chat list, or a message saying what is wrong with it."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else "prompt: must not be empty"
    if not isinstance(value, list) or not value:
        return (
            f"prompt: expected a non-empty string or a list of {{role, content}} messages, got {type(value).__name__}"
        )
    messages: list[dict[str, str]] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"prompt[{index}]: expected an object with exactly role and content"
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            return f"prompt[{index}].role: {role!r} is not one of {sorted(CHAT_ROLES)}"
        if not isinstance(content, str):
            return f"prompt[{index}].content: expected a string, got {type(content).__name__}"
        messages.append({"role": role, "content": content})
    return messages


def _parse_task(raw: str, line: int) -> Task | list[str]:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as error:
        return [f"not valid JSON ({error.msg} at column {error.colno})"]
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = [f"{key}: missing (required: {', '.join(REQUIRED_KEYS)})" for key in REQUIRED_KEYS if key not in row]
    problems += [
        f"{key}: unknown field (accepted: {', '.join(sorted(TASK_KEYS))})" for key in sorted(set(row) - TASK_KEYS)
    ]
    task_id = row.get("id")
    if "id" in row and (not isinstance(task_id, str | int) or isinstance(task_id, bool) or str(task_id).strip() == ""):
        problems.append(f"id: expected a non-empty string or integer, got {task_id!r}")
    prompt = _prompt_messages(row["prompt"]) if "prompt" in row else []
    if isinstance(prompt, str):
        problems.append(prompt)
    truth = row.get("ground_truth")
    if "ground_truth" in row and (isinstance(truth, bool) or not isinstance(truth, str | int | float) or truth == ""):
        problems.append(f"ground_truth: expected a non-empty string or number, got {truth!r}")
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        problems.append(f"metadata: expected an object, got {type(metadata).__name__}")
    if problems or isinstance(prompt, str):
        return problems
    return Task(line=line, id=str(task_id), prompt=prompt, ground_truth=str(truth), metadata=metadata)


def read_tasks(path: Path) -> list[Task]:
    """Every task in ``path``; raises DatasetError naming each malformed line (all of them, not just the first)."""
    tasks: list[Task] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            lines = list(enumerate(handle, start=1))
        except UnicodeDecodeError as error:
            raise DatasetError([f"{path}: not UTF-8 ({error.reason} at byte {error.start})"]) from error
    for number, raw in lines:
        if not raw.strip():
            continue
        parsed = _parse_task(raw, number)
        if isinstance(parsed, list):
            problems += [f"{path}:{number}: {problem}" for problem in parsed]
            continue
        if parsed.id in seen:
            problems.append(f"{path}:{number}: id: {parsed.id!r} already used on line {seen[parsed.id]}")
            continue
        seen[parsed.id] = number
        tasks.append(parsed)
    if problems:
        raise DatasetError(problems)
    if not tasks:
        raise DatasetError([f"{path}: no tasks (expected one JSON object per line with {', '.join(REQUIRED_KEYS)})"])
    return tasks


def in_validation(task_id: str, fraction: float, seed: str) -> bool:
    """Stable split by id: a task stays on its side when other tasks are added or removed."""
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [("index", pa.int64()), ("split", pa.string()), ("id", pa.string()), ("metadata", pa.string())]
                ),
            ),
        ]
    )


def verl_row(task: Task, *, index: int, split: str, data_source: str, ability: str) -> dict[str, Any]:
    return {
        "data_source": data_source,
        "prompt": task.prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": task.ground_truth},
        # JSON keeps one parquet schema however each task's metadata is shaped.
        "extra_info": {"index": index, "split": split, "id": task.id, "metadata": json.dumps(task.metadata)},
    }


def build_dataset(
    tasks_path: Path,
    output_dir: Path,
    *,
    validation_fraction: float = 0.1,
    seed: str = "loka",
    data_source: str = "loka",
    ability: str = "math",
) -> SplitSummary:
    """Write ``train.parquet`` and ``validation.parquet``; both appear together or neither does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not 0.0 <= validation_fraction < 1.0:
        msg = f"validation fraction must be in [0, 1), got {validation_fraction}"
        raise ValueError(msg)
    tasks = read_tasks(tasks_path)
    splits: dict[str, list[Task]] = {"train": [], "validation": []}
    for task in tasks:
        splits["validation" if in_validation(task.id, validation_fraction, seed) else "train"].append(task)
    if not splits["train"]:
        raise DatasetError([f"{tasks_path}: every task landed in validation; lower the validation fraction"])
    output_dir.mkdir(parents=True, exist_ok=True)
    targets = {"train": output_dir / TRAIN_FILE, "validation": output_dir / VALIDATION_FILE}
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".loka-dataset-") as staging:
        for split, rows in splits.items():
            table = pa.Table.from_pylist(
                [
                    verl_row(t, index=i, split=split, data_source=data_source, ability=ability)
                    for i, t in enumerate(rows)
                ],
                schema=parquet_schema(),
            )
            pq.write_table(table, Path(staging) / targets[split].name)
        # Renames within one folder are atomic; nothing is replaced before both files are complete.
        for target in targets.values():
            (Path(staging) / target.name).replace(target)
    return SplitSummary(targets["train"], targets["validation"], len(splits["train"]), len(splits["validation"]))
