"""The reward-model server's staging: a run's checkpoint is restored (verified against its manifest) as a model
folder, and ``--stage-only`` stages it for the serving container and exits (the init container of a served model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loka_trainer import rm_server, source_model


def test_a_runs_checkpoint_is_restored_through_its_manifest_and_stage_only_serves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    restored: list[tuple[str, Path]] = []

    def restore(uri: str, dest: Path, store: Any, **_: Any) -> Path:
        restored.append((uri, dest))
        dest.mkdir(parents=True)
        return dest

    monkeypatch.setattr(source_model, "stage_checkpoint_as_model", restore)
    monkeypatch.setattr(rm_server, "RewardModel", lambda *_: pytest.fail("--stage-only must not load the model"))
    uri = "s3://loka/checkpoints/team-a/rm-1/uid-rm/global_step_20"
    assert rm_server.main(["--model", f"{uri}/", "--stage-only", str(tmp_path / "rm")]) == 0
    assert restored == [(uri, tmp_path / "rm")]


def test_a_local_folder_is_served_as_it_is(tmp_path: Path) -> None:
    assert rm_server.stage(str(tmp_path), tmp_path / "unused") == tmp_path
