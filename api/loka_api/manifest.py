"""A checkpoint's manifest: every file's path, size and sha256, written after the files, read by whoever
restores or downloads it (the trainer on resume, `loka checkpoints --download`). Its presence marks the
checkpoint complete (``loka_api.contract``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
_HASH_BLOCK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "step": self.step,
            "created": self.created,
            "totalBytes": self.total_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CheckpointManifest:
        body: dict[str, Any] = json.loads(raw)
        files = tuple(ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in body["files"])
        return cls(step=int(body["step"]), files=files, created=str(body["created"]))
