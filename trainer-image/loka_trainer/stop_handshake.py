"""What `loka-trainer run` and verl's TaskRunner tell each other about stopping, through files in the run's work dir.

The TaskRunner (verl's training loop and Loka's checkpoint callback) is pinned to the head node, where
`loka-trainer run` lives (``loka_trainer.verl_driver``), so a folder on that node's disk is a channel both see:

- ``uploading``: the step whose checkpoint uploads in the background right now (absent: none). The trainer waits
  for it before it stops verl, so a stop never kills a periodic upload that would have finished.
- ``requested``: the trainer asks for a save at the end of the step in flight (a preemption or a suspension); the
  callback saves, uploads and moves the marker, then answers with
- ``saved`` (the step now marked) or ``failed`` (why the save did not happen: the run resumes from the last one);
- ``released``: the trainer is done waiting and now stops verl. Ray's job stop sends SIGTERM to the trainer and
  every process under it at once; verl's driver ignores it until it is released (``verl_driver``), or the save
  it was asked for would die with it.

Every write is a rename into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class StopHandshake:
    folder: Path

    def reset(self) -> None:
        """Forget an earlier attempt's words (a reused work dir)."""
        for name in ("uploading", "requested", "saved", "failed", "released"):
            (self.folder / name).unlink(missing_ok=True)

    # -- the trainer's side ---------------------------------------------------------------------

    def request_save(self, reason: str) -> None:
        _write(self.folder / "requested", reason)

    def saved_step(self) -> int | None:
        text = _read(self.folder / "saved")
        return None if not text else int(text)

    def failure(self) -> str | None:
        return _read(self.folder / "failed")

    def release(self) -> None:
        _write(self.folder / "released", "")

    def released(self) -> bool:
        return (self.folder / "released").exists()

    def uploading_step(self) -> int | None:
        text = _read(self.folder / "uploading")
        return None if not text else int(text)

    # -- the callback's side --------------------------------------------------------------------

    def save_requested(self) -> str | None:
        """Why a save was requested (SIGTERM, …), or None."""
        return _read(self.folder / "requested")

    def mark_uploading(self, step: int | None) -> None:
        if step is None:
            (self.folder / "uploading").unlink(missing_ok=True)
        else:
            _write(self.folder / "uploading", str(step))

    def mark_saved(self, step: int) -> None:
        _write(self.folder / "saved", str(step))

    def mark_failed(self, why: str) -> None:
        _write(self.folder / "failed", why)
