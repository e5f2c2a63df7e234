"""`loka-trainer dataset` builds with the core's one dataset builder and reports bad rows without writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loka_trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main


def test_trainer_dataset_command_writes_both_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": i, "prompt": f"{i}?", "ground_truth": i}) for i in range(30)))
    assert main(["dataset", str(tasks), "-o", str(tmp_path / "out")]) == EXIT_OK
    assert "train.parquet" in capsys.readouterr().out
    assert (tmp_path / "out" / "validation.parquet").exists()


def test_trainer_dataset_command_names_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": 1}\n')
    assert main(["dataset", str(tasks), "-o", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert f"{tasks}:1: prompt: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
