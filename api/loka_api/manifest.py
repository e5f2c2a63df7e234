"""A checkpoint's manifest: every file's path, size and sha256, written after the files, read by whoever
restores or downloads it (the trainer on resume, `loka checkpoints --download`). Its presence marks the
checkpoint complete (``loka_api.contract``). It also records which run (uid) and which attempt of it wrote the
checkpoint: the ``Writer`` that the run's marker is fenced by.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 2
_HASH_BLOCK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Writer:
    """One attempt of a run, the only one that may move the run's marker or prune while its claim stands.

    ``attempt`` is the operator's ``status.attempt`` for it (0 when unknown): a claim by an older attempt than
    the marker's is refused, so an attempt that was already replaced can never take the checkpoints back.
    ``holder`` says what runs the attempt and tells two of the same number apart: KubeRay's RayCluster for it
    (``$RAY_CLUSTER_NAME``, new for every attempt), else ``host:pid``.
    """

    attempt: int
    holder: str

    def __str__(self) -> str:
        return f"attempt {self.attempt} ({self.holder})"

    def to_env(self) -> str:
        """One string for an environment variable (verl's actors get it through Ray's runtime_env)."""
        return f"{self.attempt}/{self.holder}"

    @classmethod
    def from_env(cls, value: str) -> Writer:
        attempt, _, holder = value.partition("/")
        if not attempt.isdigit() or not holder:
            msg = f"a checkpoint writer is written <attempt>/<holder> (e.g. 2/qwen-gsm8k-x7k2p), got {value!r}"
            raise ValueError(msg)
        return cls(int(attempt), holder)

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "holder": self.holder}

    @classmethod
    def from_json(cls, body: Any) -> Writer | None:
        if not isinstance(body, dict):
            return None
        try:
            return cls(int(body["attempt"]), str(body["holder"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointManifest:
    step: int
    files: tuple[ManifestFile, ...]
    created: str
    writer: Writer | None = None
    run_uid: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "step": self.step,
            "created": self.created,
            "runUid": self.run_uid,
            "writer": self.writer.to_json() if self.writer else None,
            "totalBytes": self.total_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointManifest:
        body: dict[str, Any] = json.loads(raw)
        files = tuple(ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in body["files"])
        return cls(
            step=int(body["step"]),
            files=files,
            created=str(body["created"]),
            writer=Writer.from_json(body.get("writer")),
            run_uid=body.get("runUid"),
        )
