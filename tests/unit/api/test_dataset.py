"""The one dataset builder: task files (JSON Lines, or JSON holding one task or a list) become verl RL parquet;
malformed rows are named by file and line and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loka_api.dataset import TOOL_KEYS, DatasetError, build_dataset


def write_tasks(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def good_rows(n: int) -> list[object]:
    return [
        {"id": f"q{i}", "prompt": f"What is {i} + {i}?", "ground_truth": str(2 * i), "metadata": {"level": i % 3}}
        for i in range(n)
    ]


def rows_of(path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows


def test_tasks_become_verl_rl_rows_split_into_train_and_validation(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", good_rows(200))
    summary = build_dataset(tasks, tmp_path / "out", data_source="openai/gsm8k")
    train, validation = rows_of(summary.train), rows_of(summary.validation)
    assert (summary.train_rows, summary.validation_rows) == (len(train), len(validation))
    assert len(train) + len(validation) == 200
    assert 5 <= len(validation) <= 40  # about 10 %
    ids = [{r["extra_info"]["id"] for r in rows} for rows in (train, validation)]  # type: ignore[index]
    assert ids[0].isdisjoint(ids[1])
    row = next(r for r in train + validation if r["extra_info"]["id"] == "q3")  # type: ignore[index]
    assert row["data_source"] == "openai/gsm8k"
    assert row["prompt"] == [{"role": "user", "content": "What is 3 + 3?"}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "6"}
    assert json.loads(row["extra_info"]["metadata"]) == {"level": 0}  # type: ignore[index]


def test_split_is_stable_when_tasks_are_added(tmp_path: Path) -> None:
    a = build_dataset(write_tasks(tmp_path / "a.jsonl", good_rows(100)), tmp_path / "a")
    b = build_dataset(write_tasks(tmp_path / "b.jsonl", good_rows(150)), tmp_path / "b")
    held_out_a = {r["extra_info"]["id"] for r in rows_of(a.validation)}  # type: ignore[index]
    held_out_b = {r["extra_info"]["id"] for r in rows_of(b.validation)}  # type: ignore[index]
    assert held_out_a == {i for i in held_out_b if int(i[1:]) < 100}


def test_chat_prompts_pass_through(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Think."}, {"role": "user", "content": "1+1?"}]
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": 1, "prompt": chat, "ground_truth": 2}])
    summary = build_dataset(tasks, tmp_path / "o", validation_fraction=0)
    (row,) = rows_of(summary.train)
    assert row["prompt"] == chat
    assert row["reward_model"]["ground_truth"] == "2"  # type: ignore[index]
    assert pq.read_table(summary.validation).num_rows == 0


def test_a_json_list_of_tool_use_tasks_keeps_tool_fields_in_extra_info(tmp_path: Path) -> None:
    mcp = {"hud": {"url": "https://mcp.example/v3/mcp", "headers": {"Run-Id": "abc"}}}
    tasks = [
        {"id": "browse-1", "prompt": "Open the page and sum the table.", "mcp_config": mcp,
         "setup_tool": {"name": "setup", "arguments": {"url": "https://example.org"}},
         "evaluate_tool": {"name": "evaluate", "arguments": {"expected": 42}}},
        {"id": "plain-2", "prompt": "2+2?", "ground_truth": "4"},
    ]  # fmt: skip
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks, indent=2))
    summary = build_dataset(path, tmp_path / "o", validation_fraction=0, allowed_hosts=["mcp.example"])
    rows = {r["extra_info"]["id"]: r for r in rows_of(summary.train)}  # type: ignore[index]
    tool = rows["browse-1"]["extra_info"]
    assert json.loads(tool["mcp_config"]) == mcp  # type: ignore[index]
    assert json.loads(tool["evaluate_tool"])["arguments"] == {"expected": 42}  # type: ignore[index]
    assert rows["browse-1"]["reward_model"] == {"style": "rule", "ground_truth": None}
    assert all(rows["plain-2"]["extra_info"][key] is None for key in TOOL_KEYS)  # type: ignore[index]


def test_a_json_file_with_one_task_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"id": "only", "prompt": "hi"}, indent=2))
    summary = build_dataset(path, tmp_path / "o", validation_fraction=0)
    assert (summary.train_rows, summary.validation_rows) == (1, 0)


def test_bad_rows_in_a_json_list_are_named_by_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text('[\n  {"id": "a", "prompt": "ok"},\n  {"id": "b"},\n  {"id": "c",\n   "prompt": ""}\n]\n')
    with pytest.raises(DatasetError) as caught:
        build_dataset(path, tmp_path / "o")
    assert caught.value.problems == [
        f"{path}:3: prompt: missing (required: id, prompt)",
        f"{path}:4: prompt: must not be empty",
    ]
    path.write_text('[\n  {"id": "a", "prompt": "ok"},\n  {"id": "b", "prompt": "x"}\n  {"id": "c"}\n]\n')
    with pytest.raises(DatasetError) as caught:
        build_dataset(path, tmp_path / "o")
    assert caught.value.problems == [f"{path}:4: not valid JSON (expected ',' or ']' after a task)"]
    assert not (tmp_path / "o" / "train.parquet").exists()


def test_malformed_rows_are_reported_by_line_and_nothing_is_written(tmp_path: Path) -> None:
    rows: list[object] = [
        *good_rows(3),
        "{not json",
        {"id": "x", "prompt": "", "ground_truth": "1"},
        {"id": "y"},
        {"id": "q0", "prompt": "dup", "ground_truth": "1"},
        {"id": "z", "prompt": [{"role": "robot", "content": "x"}], "ground_truth": "1"},
        {"id": "w", "prompt": "p", "ground_truth": "1", "groundtruth": "typo"},
        [1, 2],
        {"id": "v", "prompt": "p", "evaluate_tool": None},
    ]
    tasks = write_tasks(tmp_path / "tasks.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"previous run")
    with pytest.raises(DatasetError) as caught:
        build_dataset(tasks, out)
    err = "\n".join(caught.value.problems)
    assert f"{tasks}:4: not valid JSON" in err
    assert f"{tasks}:5: prompt: must not be empty" in err
    assert f"{tasks}:6: prompt: missing" in err
    assert f"{tasks}:7: id: 'q0' already used on line 1" in err
    assert f"{tasks}:8: prompt[0].role: 'robot' is not one of" in err
    assert f"{tasks}:9: groundtruth: unknown field" in err
    assert f"{tasks}:10: expected a JSON object, got list" in err
    assert f"{tasks}:11: evaluate_tool: must not be null" in err
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]
    assert (out / "train.parquet").read_bytes() == b"previous run"


def test_empty_task_file_is_an_error(tmp_path: Path) -> None:
    tasks = tmp_path / "empty.jsonl"
    tasks.write_text("\n\n")
    with pytest.raises(DatasetError, match="no tasks"):
        build_dataset(tasks, tmp_path / "o")
    assert not (tmp_path / "o" / "train.parquet").exists()


HUD_TASK = {
    "id": "task-001",
    "prompt": "Reach 2048 on the board",
    "mcp_config": {"env": {"url": "http://env.envs.svc:8765/mcp",
                           "headers": {"Authorization": "Bearer ${ENV_API_KEY}", "Mcp-Image": "org/env:latest"}}},
    "setup_tool": {"name": "setup", "arguments": {"name": "board", "size": 4}},
    "evaluate_tool": {"name": "evaluate", "arguments": {"name": "max_number", "target": 2048}},
    "metadata": {"difficulty": "easy"},
}  # fmt: skip


def test_hud_tasks_keep_variable_references_and_no_secret_reaches_the_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENV_API_KEY", "sk-very-secret-value")
    for name, content in (("one.json", HUD_TASK), ("list.json", [HUD_TASK, {**HUD_TASK, "id": "task-002"}])):
        path = tmp_path / name
        path.write_text(json.dumps(content, indent=2))
        summary = build_dataset(
            path, tmp_path / name.split(".")[0], validation_fraction=0, allowed_hosts=["*.envs.svc"]
        )
        rows = rows_of(summary.train)
        assert len(rows) == (1 if name == "one.json" else 2)
        config = json.loads(rows[0]["extra_info"]["mcp_config"])  # type: ignore[index]
        assert config["env"]["headers"]["Authorization"] == "Bearer ${ENV_API_KEY}"
        assert b"sk-very-secret-value" not in summary.train.read_bytes()


@pytest.mark.parametrize(
    ("change", "allowed", "words"),
    [
        ({}, None, ["mcp_config.env.url", "--allowed-host"]),
        ({}, ["*.other.svc"], ["mcp_config.env.url: 'http://env.envs.svc:8765/mcp' is not on an allowed host"]),
        ({"mcp_config": {"env": {"url": "http://env.envs.svc/mcp", "headers": {"Authorization": "Bearer sk-1"}}}},
         ["*.envs.svc"], ["mcp_config.env.headers.Authorization: a literal credential"]),
        ({"agent_config": {"action_mappings": {"move": {"direction": {"transform": "lambda x: __import__('os')"}}}}},
         ["*.envs.svc"], ["agent_config.action_mappings.move.direction.transform", "Python lambda"]),
    ],
)  # fmt: skip
def test_hud_tasks_that_would_call_elsewhere_leak_a_secret_or_run_code_are_refused(
    tmp_path: Path, change: dict[str, object], allowed: list[str] | None, words: list[str]
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({**HUD_TASK, **change}))
    with pytest.raises(DatasetError) as caught:
        build_dataset(path, tmp_path / "o", allowed_hosts=allowed)
    text = "\n".join(caught.value.problems)
    for word in words:
        assert word in text
    assert "sk-1" not in text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
