"""The one reader of a run's checkpoints in S3: which steps are complete, what the marker names, each step's
manifest, and a download verified file by file against it. The S3 access is handed in (an ``ObjectStore`` of
``loka_api.storage``, or anything with the same reading methods), so the trainer (resume) and the client library
(``loka checkpoints``, notebooks) read through the same code; the trainer writes through the same layout
(``marker_body``, the manifest of ``loka_api.manifest``).

The layout is the contract's (``loka_api.contract``): under the run's prefix (namespace, name and uid) a
``global_step_N`` folder per checkpoint, its manifest (written after all its files: a checkpoint is complete
exactly when its manifest exists) and the marker ``latest`` (written after the manifest, naming the step and the
attempt that holds the run's checkpoints).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from loka_api.contract import (
    MANIFEST_NAME,
    MARKER_NAME,
    PINS_FOLDER,
    STEP_FOLDER,
    STEP_FOLDER_PREFIX,
    run_checkpoint_prefix,
    step_folder,
)
from loka_api.manifest import CheckpointManifest, ManifestFile, Writer, sha256_file
from loka_api.storage import ObjectMissingError, S3Uri, TransferredFile, VersionedBytes

log = logging.getLogger(__name__)

# verl's FSDP checkpoint manager names each rank's shards <kind>_world_size_<W>_rank_<R>.pt; only rank R loads them.
RANK_SHARD = re.compile(r"_world_size_(\d+)_rank_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


def matches(expected: ManifestFile, got: TransferredFile) -> bool:
    """The received file is the one the manifest lists: its CRC64NVME, computed from the bytes as they arrived (a
    version-2 manifest's sha256 reads the file once more)."""
    if expected.crc64nvme:
        return got.crc64nvme == expected.crc64nvme
    return expected.sha256 is not None and sha256_file(got.path) == expected.sha256


class CheckpointMismatchError(CheckpointError):
    """A file arrived, but its size or checksum is not what the manifest says."""

    def __init__(self, source: S3Uri, expected: ManifestFile, got: TransferredFile) -> None:
        self.source, self.expected, self.got = source, expected, got
        super().__init__(f"checkpoint {source}: {expected.path} does not match its manifest ({self.difference})")

    @property
    def difference(self) -> str:
        return (
            f"size {self.got.size} vs {self.expected.size}, crc64nvme {self.got.crc64nvme} vs {self.expected.checksum}"
        )


class ObjectReader(Protocol):
    """The S3 access the reader needs (``loka_api.storage.ObjectStore`` has it)."""

    def list_folders(self, prefix: S3Uri) -> list[str]: ...
    def get_bytes(self, uri: S3Uri) -> bytes | None: ...
    def get_versioned(self, uri: S3Uri) -> VersionedBytes | None: ...
    def exists(self, uri: S3Uri) -> bool: ...
    def download_files(
        self,
        files: Iterable[tuple[S3Uri, Path]],
        *,
        sizes: Iterable[int] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[TransferredFile]: ...


Store = TypeVar("Store", bound=ObjectReader)


@dataclass(frozen=True)
class CheckpointRecord:
    """What status.checkpoint shows (and the marker names): the step, where it is, and when it became complete."""

    step: int
    uri: str
    time: str


@dataclass(frozen=True)
class MarkerState:
    """The marker as read: the checkpoint it names (None before the first), who holds it, and its version."""

    record: CheckpointRecord | None
    writer: Writer | None
    etag: str | None  # None: there is no marker

    @property
    def step(self) -> int | None:
        return None if self.record is None else self.record.step


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint, as a listing shows it."""

    step: int
    uri: str
    files: int
    bytes: int
    created: str
    latest: bool  # the marker names it


def marker_body(record: CheckpointRecord | None, writer: Writer) -> bytes:
    """The marker's content: the checkpoint it names (none yet: nulls) and the attempt that holds the run's."""
    return json.dumps(
        {
            "step": None if record is None else record.step,
            "uri": None if record is None else record.uri,
            "time": None if record is None else record.time,
            "writer": writer.to_json(),
        }
    ).encode()


def parse_marker(data: bytes) -> tuple[CheckpointRecord | None, Writer | None]:
    """The checkpoint a marker names and its holder; ValueError when it cannot be read."""
    try:
        body = json.loads(data)
        record = None
        if body.get("step") is not None:
            record = CheckpointRecord(step=int(body["step"]), uri=str(body["uri"]), time=str(body["time"]))
        return record, Writer.from_json(body.get("writer"))
    except (KeyError, TypeError, AttributeError) as error:
        msg = f"unreadable marker: {error}"
        raise ValueError(msg) from error


def shard_rank(path: str) -> int | None:
    """The rank whose shard ``path`` is (verl's FSDP naming), or None for a file every rank may read."""
    match = RANK_SHARD.search(path)
    return None if match is None else int(match.group(2))


def files_for_ranks(files: Iterable[ManifestFile], ranks: Collection[int] | None) -> list[ManifestFile]:
    """The files a node needs when its processes are ``ranks``: every shared file and those ranks' shards
    (None: every file, for engines that load the whole checkpoint in one process).
    """
    if ranks is None:
        return list(files)
    return [f for f in files if (rank := shard_rank(f.path)) is None or rank in ranks]


class CheckpointIndex(Generic[Store]):
    """The checkpoints of one run (one uid) under its S3 prefix, read-only, through ``store``."""

    def __init__(self, store: Store, prefix: S3Uri) -> None:
        self.store = store
        self.prefix = prefix

    @classmethod
    def run_prefix(cls, checkpoints_uri: str, *, namespace: str, run_name: str, uid: str) -> S3Uri:
        return S3Uri.parse(run_checkpoint_prefix(checkpoints_uri, namespace, run_name, uid))

    @classmethod
    def of_run(
        cls, store: Store, checkpoints_uri: str, *, namespace: str, run_name: str, uid: str
    ) -> CheckpointIndex[Store]:
        return cls(store, cls.run_prefix(checkpoints_uri, namespace=namespace, run_name=run_name, uid=uid))

    @staticmethod
    def split_checkpoint_uri(uri: str) -> tuple[S3Uri, int]:
        """An explicit ``s3://…/global_step_N`` (``checkpoints.resume``) as (the run prefix holding it, N)."""
        parsed = S3Uri.parse(uri.rstrip("/"))
        match = STEP_FOLDER.match(parsed.name)
        if match is None:
            msg = f"checkpoints.resume: expected auto, never or s3://…/{STEP_FOLDER_PREFIX}<N>, got {uri!r}"
            raise ValueError(msg)
        return S3Uri(parsed.bucket, parsed.key.rpartition("/")[0]), int(match.group(1))

    def step_uri(self, step: int) -> S3Uri:
        return self.prefix.join(step_folder(step))

    @property
    def marker_uri(self) -> S3Uri:
        return self.prefix.join(MARKER_NAME)

    @property
    def pins_uri(self) -> S3Uri:
        return self.prefix.join(PINS_FOLDER)

    def pin_uri(self, step: int, holder: str) -> S3Uri:
        """The pin of checkpoint ``step`` that the run of uid ``holder`` needs."""
        return self.pins_uri.join(step_folder(step)).join(holder)

    def pinned_steps(self) -> list[int]:
        """The steps some dependent run still needs (a pin object under ``pins/``): pruning keeps them."""
        names = self.store.list_folders(self.pins_uri)
        return sorted({int(m.group(1)) for name in names if (m := STEP_FOLDER.match(name))})

    def all_steps(self) -> list[int]:
        """Every ``global_step_N`` folder under the prefix, complete or not, oldest first."""
        steps = [int(m.group(1)) for name in self.store.list_folders(self.prefix) if (m := STEP_FOLDER.match(name))]
        return sorted(steps)

    def manifest(self, step: int) -> CheckpointManifest | None:
        raw = self.store.get_bytes(self.step_uri(step).join(MANIFEST_NAME))
        return None if raw is None else CheckpointManifest.from_json(raw)

    def complete_steps(self) -> list[int]:
        return [step for step in self.all_steps() if self.store.exists(self.step_uri(step).join(MANIFEST_NAME))]

    def marker_state(self) -> MarkerState:
        """The marker with its version; an unreadable one counts as held by nobody and naming no checkpoint."""
        versioned = self.store.get_versioned(self.marker_uri)
        if versioned is None:
            return MarkerState(None, None, None)
        try:
            record, writer = parse_marker(versioned.data)
        except ValueError:
            log.warning("ignoring unreadable marker %s", self.marker_uri)
            return MarkerState(None, None, versioned.etag)
        return MarkerState(record, writer, versioned.etag)

    def marker(self) -> CheckpointRecord | None:
        """The checkpoint the marker names, or None when there is no (readable) marker or no checkpoint yet."""
        return self.marker_state().record

    def marker_step(self) -> int | None:
        return self.marker_state().step

    def latest_complete(self) -> int | None:
        """The marker's step when it is complete, else the newest complete step, else None."""
        marker = self.marker_step()
        if marker is not None and self.manifest(marker) is not None:
            return marker
        complete = self.complete_steps()
        return complete[-1] if complete else None

    def checkpoints(self) -> list[Checkpoint]:
        """Every complete checkpoint, oldest first (an incomplete one, being uploaded or abandoned, is left out)."""
        marker = self.marker_step()
        found: list[Checkpoint] = []
        for step in self.all_steps():
            manifest = self.manifest(step)
            if manifest is None:
                continue
            uri = str(self.step_uri(step))
            found.append(Checkpoint(step, uri, len(manifest.files), manifest.total_bytes, manifest.created,
                                    latest=step == marker))  # fmt: skip
        return found

    def fetch(
        self,
        step: int,
        folder: Path,
        *,
        ranks: Collection[int] | None = None,
        cancel: threading.Event | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> CheckpointManifest:
        """Download step ``step`` into ``folder`` (only the files ``ranks`` load, see ``files_for_ranks``, and of
        those only the paths ``only`` picks), each verified against the manifest as soon as it lands.

        Raises CheckpointError when the checkpoint is incomplete or a file is gone, CheckpointMismatchError when
        one does not match; what was downloaded stays for the caller to remove.
        """
        manifest = self.manifest(step)
        source = self.step_uri(step)
        if manifest is None:
            msg = f"checkpoint {source} is incomplete: it has no {MANIFEST_NAME}"
            raise CheckpointError(msg)
        wanted = [f for f in files_for_ranks(manifest.files, ranks) if only is None or only(f.path)]
        pairs = [(source.join(f.path), folder / f.path) for f in wanted]
        for _, path in pairs:
            if not path.resolve().is_relative_to(folder.resolve()):
                msg = f"the manifest of {source} names a path outside the checkpoint: {path}"
                raise CheckpointError(msg)
        try:
            received = self.store.download_files(pairs, sizes=[f.size for f in wanted], cancel=cancel)
        except ObjectMissingError as error:
            msg = f"checkpoint {source} lost a file since its manifest was written: {error}"
            raise CheckpointError(msg) from error
        for expected, got in zip(wanted, received, strict=True):
            if got.size != expected.size or not matches(expected, got):
                raise CheckpointMismatchError(source, expected, got)
        return manifest
