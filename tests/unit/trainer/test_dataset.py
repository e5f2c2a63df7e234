"""`loka-trainer dataset`: task files become verl RL parquet, malformed rows are named and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loka_trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main


def write_tasks(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def good_rows(n: int) -> list[object]:
    return [
        {"id": f"q{i}", "prompt": f"What is {i} + {i}?", "ground_truth": str(2 * i), "metadata": {"level": i % 3}}
        for i in range(n)
    ]


def test_tasks_become_verl_rl_rows_split_into_train_and_validation(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", good_rows(200))
    out = tmp_path / "out"
    assert main(["dataset", str(tasks), "-o", str(out), "--data-source", "openai/gsm8k"]) == EXIT_OK
    train = pq.read_table(out / "train.parquet").to_pylist()
    validation = pq.read_table(out / "validation.parquet").to_pylist()
    assert len(train) + len(validation) == 200
    assert 5 <= len(validation) <= 40  # about 10 %
    assert {r["extra_info"]["id"] for r in train}.isdisjoint({r["extra_info"]["id"] for r in validation})
    row = next(r for r in train + validation if r["extra_info"]["id"] == "q3")
    assert row["data_source"] == "openai/gsm8k"
    assert row["prompt"] == [{"role": "user", "content": "What is 3 + 3?"}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "6"}
    assert json.loads(row["extra_info"]["metadata"]) == {"level": 0}


def test_split_is_stable_when_tasks_are_added(tmp_path: Path) -> None:
    main(["dataset", str(write_tasks(tmp_path / "a.jsonl", good_rows(100))), "-o", str(tmp_path / "a")])
    main(["dataset", str(write_tasks(tmp_path / "b.jsonl", good_rows(150))), "-o", str(tmp_path / "b")])
    held_out_a = {r["extra_info"]["id"] for r in pq.read_table(tmp_path / "a" / "validation.parquet").to_pylist()}
    held_out_b = {r["extra_info"]["id"] for r in pq.read_table(tmp_path / "b" / "validation.parquet").to_pylist()}
    assert held_out_a == {i for i in held_out_b if int(i[1:]) < 100}


def test_chat_prompts_pass_through(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Think."}, {"role": "user", "content": "1+1?"}]
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": 1, "prompt": chat, "ground_truth": 2}])
    assert main(["dataset", str(tasks), "-o", str(tmp_path / "o"), "--validation-fraction", "0"]) == EXIT_OK
    (row,) = pq.read_table(tmp_path / "o" / "train.parquet").to_pylist()
    assert row["prompt"] == chat
    assert row["reward_model"]["ground_truth"] == "2"
    assert pq.read_table(tmp_path / "o" / "validation.parquet").num_rows == 0


def test_malformed_rows_are_reported_by_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[object] = [
        *good_rows(3),
        "{not json",
        {"id": "x", "prompt": "", "ground_truth": "1"},
        {"id": "y", "prompt": "hi"},
        {"id": "q0", "prompt": "dup", "ground_truth": "1"},
        {"id": "z", "prompt": [{"role": "robot", "content": "x"}], "ground_truth": "1"},
        {"id": "w", "prompt": "p", "ground_truth": "1", "groundtruth": "typo"},
        [1, 2],
    ]
    tasks = write_tasks(tmp_path / "tasks.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"previous run")
    assert main(["dataset", str(tasks), "-o", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{tasks}:4: not valid JSON" in err
    assert f"{tasks}:5: prompt: must not be empty" in err
    assert f"{tasks}:6: ground_truth: missing" in err
    assert f"{tasks}:7: id: 'q0' already used on line 1" in err
    assert f"{tasks}:8: prompt[0].role: 'robot' is not one of" in err
    assert f"{tasks}:9: groundtruth: unknown field" in err
    assert f"{tasks}:10: expected a JSON object, got list" in err
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]
    assert (out / "train.parquet").read_bytes() == b"previous run"


def test_empty_task_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "empty.jsonl"
    tasks.write_text("\n\n")
    assert main(["dataset", str(tasks), "-o", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    assert "no tasks" in capsys.readouterr().err
    assert not (tmp_path / "o" / "train.parquet").exists()
