"""A checkpoint's manifest: every file's path, size and CRC64NVME (the checksum S3 verified when the file was
stored; manifests of version 2 carry a sha256 instead), written after the files, read by whoever
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

# 3: each file's CRC64NVME (S3's full-object checksum, base64); 2: its sha256 (hex), still read and verified.
MANIFEST_VERSION = 3
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
    """One file of a checkpoint and its checksum: CRC64NVME as S3 writes it (base64), or a sha256 (hex) in
    manifests written before version 3."""

    path: str
    size: int
    crc64nvme: str | None = None
    sha256: str | None = None

    @property
    def checksum(self) -> str:
        """What restore compares, named by algorithm."""
        return f"crc64nvme {self.crc64nvme}" if self.crc64nvme else f"sha256 {self.sha256}"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.crc64nvme:
            body["crc64nvme"] = self.crc64nvme
        if self.sha256:
            body["sha256"] = self.sha256
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ManifestFile:
        crc, sha = body.get("crc64nvme"), body.get("sha256")
        if not crc and not sha:
            msg = f"the manifest lists {body.get('path')!r} without a checksum (crc64nvme or sha256)"
            raise ValueError(msg)
        return cls(str(body["path"]), int(body["size"]), str(crc) if crc else None, str(sha) if sha else None)


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
            "files": [f.to_json() for f in self.files],
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointManifest:
        body: dict[str, Any] = json.loads(raw)
        files = tuple(ManifestFile.from_json(f) for f in body["files"])
        return cls(
            step=int(body["step"]),
            files=files,
            created=str(body["created"]),
            writer=Writer.from_json(body.get("writer")),
            run_uid=body.get("runUid"),
        )
