"""SFT data: demonstrations (a prompt column and a response column) as conversations, the one shape both engines
read (verl's MultiTurnSFTDataset reads a messages column; the trl engine splits each into prompt and completion).

A prompt is a string (one user turn) or a chat list of ``{role, content}``; a response is a string (the assistant's
turn). A bad row is named by file, row and column, before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loka_api.recipes.sft import MESSAGES_COLUMN as SFT_MESSAGES_COLUMN

ROLES = frozenset({"system", "user", "assistant", "tool"})


class SFTDataError(ValueError):
    """The SFT data does not have the shape the spec names; the message says where and what is accepted."""


def _columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    names: list[str] = pq.read_schema(path).names
    return names


def _require_column(path: Path, column: str, field: str, label: str) -> None:
    columns = _columns(path)
    if column not in columns:
        msg = f"{field}: column {column!r} is not in {label} (its columns: {', '.join(columns)})"
        raise SFTDataError(msg)


def _message(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str) or "content" not in value:
        msg = f"{where}: expected a {{role, content}} message, got {value!r:.80}"
        raise SFTDataError(msg)
    if value["role"] not in ROLES:
        msg = f"{where}.role: {value['role']!r} is not one of {', '.join(sorted(ROLES))}"
        raise SFTDataError(msg)
    return {"role": value["role"], "content": str(value["content"] or "")}


def prompt_messages(prompt: Any, where: str) -> list[dict[str, str]]:
    """A prompt cell as chat messages: a string is one user turn."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SFTDataError(f"{where}: the prompt is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list | tuple) and prompt:
        return [_message(m, f"{where}[{i}]") for i, m in enumerate(prompt)]
    msg = f"{where}: expected a string or a non-empty list of {{role, content}} messages, got {prompt!r:.80}"
    raise SFTDataError(msg)


def demonstrations_to_conversations(
    source: Path, dest: Path, *, prompt_key: str, response_key: str, label: str
) -> Path:
    """Write ``dest`` with one ``messages`` column: the prompt's turns, then the response as the assistant's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_column(source, prompt_key, "spec.data.promptKey", label)
    _require_column(source, response_key, "spec.data.responseKey", label)
    table = pq.read_table(source, columns=[prompt_key, response_key])
    conversations = []
    for row, (prompt, response) in enumerate(
        zip(table.column(prompt_key).to_pylist(), table.column(response_key).to_pylist(), strict=True)
    ):
        messages = prompt_messages(prompt, f"{label} row {row} column {prompt_key!r}")
        if not isinstance(response, str) or not response.strip():
            msg = f"{label} row {row} column {response_key!r}: expected the response text, got {response!r:.80}"
            raise SFTDataError(msg)
        conversations.append([*messages, {"role": "assistant", "content": response}])
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    out = pa.table({SFT_MESSAGES_COLUMN: pa.array(conversations, type=pa.list_(message))})
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    pq.write_table(out, partial)
    partial.replace(dest)
    return dest


def check_conversations(path: Path, *, messages_key: str, label: str) -> None:
    """A messagesKey column must exist (verl and TRL would fail later, and less clearly)."""
    _require_column(path, messages_key, "spec.data.messagesKey", label)


def read_conversations(path: Path, messages_key: str) -> list[list[dict[str, str]]]:
    """Every row's conversation, checked: each ends with the assistant's turn (what SFT learns)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=[messages_key]).column(messages_key).to_pylist()
    conversations = []
    for row, value in enumerate(rows):
        where = f"{path.name} row {row} column {messages_key!r}"
        messages = prompt_messages(value, where)
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise SFTDataError(f"{where}: a conversation must end with the assistant's turn after a prompt")
        conversations.append(messages)
    return conversations
