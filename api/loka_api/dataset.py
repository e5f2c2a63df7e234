"""Task files to verl's RL parquet, split into train and validation: the one dataset builder.

Both sides use it: `loka dataset` on a researcher's machine, `loka-trainer dataset` in the image, and the demo.
It lives in the core because the row format is what the trainer's engines read; pyarrow is imported only when a
dataset is written, so the operator (which never builds one) does not carry it.

A task file is JSON Lines (one task per line), or JSON holding one task or a list of tasks. A task has:

- ``id`` (string or integer, unique) and ``prompt`` (a string, or a list of ``{role, content}`` messages);
- optional ``ground_truth`` (string or number) and ``metadata`` (an object);
- optional tool-use fields, HUD SDK v0.4's (``mcp_config``, ``setup_tool``, ``evaluate_tool``), kept in ``extra_info``
  as JSON for the agent loop. ``${VAR}`` references in them stay references (the pod substitutes them when it
  connects); a literal credential in a header is refused; every ``mcp_config`` URL must be on an allowed host
  (``allowed_hosts``, from the run's ``spec.environment``); HUD's ``transform`` mappings (Python lambdas) are refused
  by name wherever they appear. ``integration_test_tool`` and ``agent_config`` are accepted and not used.

Each output row: ``data_source``, ``prompt`` (chat list), ``ability``, ``reward_model {style, ground_truth}``,
``extra_info {index, split, id, metadata, mcp_config, setup_tool, evaluate_tool}``
(verl/utils/dataset/rl_dataset.py, examples/data_preprocess/gsm8k.py). Object-valued fields are JSON strings so
that one parquet schema holds every task, however each one's metadata or tool configuration is shaped.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loka_api.environments import header_problems, host_allowed, variables_in

REQUIRED_KEYS = ("id", "prompt")
TOOL_KEYS = ("mcp_config", "setup_tool", "evaluate_tool")
# HUD SDK v0.4 task fields Loka accepts and does not use (checked for code to run all the same).
IGNORED_HUD_KEYS = ("integration_test_tool", "agent_config")
TASK_KEYS = frozenset({*REQUIRED_KEYS, "ground_truth", "metadata", *TOOL_KEYS, *IGNORED_HUD_KEYS})
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
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
    ground_truth: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)  # the TOOL_KEYS the task has, as given


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


def _transform_paths(value: Any, path: str) -> list[str]:
    """Where a value holds HUD's ``transform`` (a Python lambda in a string)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found += [where] if key == "transform" else _transform_paths(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _transform_paths(item, f"{path}[{index}]")
    return found


def _mcp_config_problems(config: Any, allowed_hosts: Sequence[str] | None) -> list[str]:
    if not isinstance(config, dict) or not config:
        return ["mcp_config: expected an object of servers {name: {url, headers}}"]
    problems: list[str] = []
    for name, server in config.items():
        where = f"mcp_config.{name}"
        if not isinstance(server, dict) or not isinstance(server.get("url"), str):
            problems.append(f"{where}.url: missing (Loka reaches MCP servers over streamable HTTP)")
            continue
        url = server["url"]
        if allowed_hosts is None:
            problems.append(
                f"{where}.url: {url!r}: name the hosts tasks may use (--allowed-host, or --run with spec.environment)"
            )
        elif not host_allowed(url, allowed_hosts):
            problems.append(f"{where}.url: {url!r} is not on an allowed host ({', '.join(allowed_hosts) or 'none'})")
        headers = server.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            problems.append(f"{where}.headers: expected an object of strings")
            continue
        # Any variable may be referenced here; the run's spec.environment.secretVariables bound them in the pod.
        declared = [n for value in headers.values() for n in variables_in(value)]
        problems += header_problems(headers, declared, where=where)
    return problems


def parse_task(row: Any, line: int, *, allowed_hosts: Sequence[str] | None = None) -> Task | list[str]:
    """One decoded task, or what is wrong with it (every problem, not just the first). ``allowed_hosts``: the hosts
    an ``mcp_config`` URL may name (None: a task with servers is refused until they are given).
    """
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
    tools = {key: row[key] for key in TOOL_KEYS if key in row}
    problems += [f"{key}: must not be null" for key, value in tools.items() if value is None]
    problems += [
        f"{where}: a transform mapping evaluates a Python lambda; Loka runs no code from task files "
        "(mappings may use static and from_arg)"
        for where in _transform_paths({k: v for k, v in row.items() if k not in {"prompt", "metadata"}}, "")
    ]
    if tools.get("mcp_config") is not None:
        problems += _mcp_config_problems(tools["mcp_config"], allowed_hosts)
    if problems or isinstance(prompt, str):
        return problems
    return Task(
        line=line,
        id=str(task_id),
        prompt=prompt,
        ground_truth=None if truth is None else str(truth),
        metadata=metadata,
        tools=tools,
    )


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


Rows = list[tuple[int, Any]]  # (line a task starts on, its decoded value or json.JSONDecodeError)


def _json_list(text: str, path: Path) -> tuple[Rows, str | None]:
    """The elements of a JSON list with the line each starts on, or where the list stops being JSON."""
    decoder = json.JSONDecoder()
    items: Rows = []
    index = text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        if index < len(text) and text[index] == "]" and not items:
            return items, None
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            return items, f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        items.append((_line_of(text, index), value))
        index = end
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        if index < len(text) and text[index] == ",":
            index += 1
            continue
        if index < len(text) and text[index] == "]":
            if text[index + 1 :].strip():
                return items, f"{path}:{_line_of(text, index + 1)}: unexpected text after the list of tasks"
            return items, None
        return items, f"{path}:{_line_of(text, index)}: not valid JSON (expected ',' or ']' after a task)"


def _decoded_rows(path: Path) -> tuple[Rows, str | None]:
    """Each task with its line, and a problem that stops reading the file (bad encoding, a broken JSON list)."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as error:
        return [], f"{path}: not UTF-8 ({error.reason} at byte {error.start})"
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_list(text, path)
    if stripped.startswith("{"):
        try:
            return [(_line_of(text, len(text) - len(stripped)), json.loads(text))], None
        except json.JSONDecodeError:
            pass  # not one object: JSON Lines
    rows: Rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append((number, json.loads(raw)))
        except json.JSONDecodeError as error:
            rows.append((number, error))
    return rows, None


def read_tasks(path: Path, *, allowed_hosts: Sequence[str] | None = None) -> list[Task]:
    """Every task in ``path``; raises DatasetError naming each malformed row (all of them, not just the first)."""
    decoded, fatal = _decoded_rows(path)
    tasks: list[Task] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, value in decoded:
        if isinstance(value, json.JSONDecodeError):
            problems.append(f"{path}:{number}: not valid JSON ({value.msg} at column {value.colno})")
            continue
        parsed = parse_task(value, number, allowed_hosts=allowed_hosts)
        if isinstance(parsed, list):
            problems += [f"{path}:{number}: {problem}" for problem in parsed]
            continue
        if parsed.id in seen:
            problems.append(f"{path}:{number}: id: {parsed.id!r} already used on line {seen[parsed.id]}")
            continue
        seen[parsed.id] = number
        tasks.append(parsed)
    if fatal is not None:
        problems.append(fatal)
    if problems:
        raise DatasetError(problems)
    if not tasks:
        raise DatasetError([f"{path}: no tasks (expected JSON Lines, or a JSON object or list, with id and prompt)"])
    return tasks


def in_validation(task_id: str, fraction: float, seed: str) -> bool:
    """Stable split by id: a task stays on its side when other tasks are added or removed."""
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def parquet_schema() -> Any:
    import pyarrow as pa

    extra = [("index", pa.int64()), ("split", pa.string()), ("id", pa.string()), ("metadata", pa.string())]
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            ("extra_info", pa.struct(extra + [(key, pa.string()) for key in TOOL_KEYS])),
        ]
    )


def verl_row(task: Task, *, index: int, split: str, data_source: str, ability: str) -> dict[str, Any]:
    tools = {key: json.dumps(task.tools[key]) if key in task.tools else None for key in TOOL_KEYS}
    return {
        "data_source": data_source,
        "prompt": task.prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": task.ground_truth},
        "extra_info": {"index": index, "split": split, "id": task.id, "metadata": json.dumps(task.metadata), **tools},
    }


def build_dataset(
    tasks_path: Path,
    output_dir: Path,
    *,
    validation_fraction: float = 0.1,
    seed: str = "loka",
    data_source: str = "loka",
    ability: str = "math",
    allowed_hosts: Sequence[str] | None = None,
) -> SplitSummary:
    """Write ``train.parquet`` and ``validation.parquet``; both appear together or neither does."""
    if not 0.0 <= validation_fraction < 1.0:
        msg = f"--validation-fraction: {validation_fraction} is not in [0, 1) (0.1 holds out about 10 %)"
        raise ValueError(msg)
    tasks = read_tasks(tasks_path, allowed_hosts=allowed_hosts)
    import pyarrow as pa
    import pyarrow.parquet as pq

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
