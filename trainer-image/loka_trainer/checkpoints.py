"""Checkpoints in S3: one run's, written by one attempt at a time, restored with fallback.

The layout is the core's contract (``loka_api.contract``): under the run's prefix (namespace, name and uid, so a
run created again under the same name never sees its predecessor's checkpoints) a step folder per checkpoint,
its manifest (every file's path, size and CRC64NVME, written after all files) and the marker (written after the
manifest). A checkpoint is complete exactly when its manifest exists; resume only ever restores complete ones.

Who may write. Each attempt of a run (a retry, a resume after a preemption) is a ``Writer``. Before it restores
anything an attempt *claims* the run's checkpoints: a conditional write of the marker (S3 ``If-Match`` on the
version it read, ``If-None-Match`` when there is none) that records the writer. From then on every write of the
marker is conditional on the marker still naming this writer, and pruning checks it again before each step it
deletes. An older attempt still uploading through its grace period can therefore neither move the marker nor
prune what the newer one restores: its next write fails with ``WriterFencedError``.

A ``CheckpointStore`` without a writer reads only (an explicit ``checkpoints.resume`` from another run, status).
Reading is the core's ``loka_api.checkpoints.CheckpointIndex`` (the client library reads through it too); this
module adds the writer, pruning and verl's resume files.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loka_api.checkpoints import (
    CheckpointError,
    CheckpointIndex,
    CheckpointRecord,
    MarkerState,
    files_for_ranks,
    marker_body,
)
from loka_api.contract import MANIFEST_NAME, STEP_FOLDER, step_folder
from loka_api.manifest import CheckpointManifest, ManifestFile, Writer
from loka_api.storage import ObjectStore, PreconditionFailedError, S3Uri, TransferCancelledError

if TYPE_CHECKING:  # the models (pydantic) stay out of what the benchmark imports
    from loka_api import CheckpointPin

log = logging.getLogger(__name__)

# verl's resume_mode=auto reads this file under trainer.default_local_dir.
VERL_TRACKER_NAME = "latest_checkpointed_iteration.txt"
# A conditional marker write that loses a race is read and tried again; a writer that keeps losing is not alone.
_MARKER_TRIES = 5
# The prefixes whose store this process found to honour conditional writes (probed once per prefix).
_PROBED: set[tuple[str, str]] = set()


class WriterFencedError(RuntimeError):
    """A newer attempt holds the run's checkpoints: this attempt must not write or prune them any more."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RestoreResult:
    """The step restored (None: nothing usable) and every newer checkpoint passed over, with why."""

    step: int | None
    skipped: tuple[tuple[int, str], ...] = ()
    record: CheckpointRecord | None = None  # the restored checkpoint, as status.checkpoint shows it

    def describe_skipped(self) -> str:
        return "; ".join(f"skipped step {step}: {why}" for step, why in self.skipped)


def merge_node_files(per_node: list[tuple[ManifestFile, ...]]) -> tuple[ManifestFile, ...]:
    """One manifest from the files each Ray node uploaded. A path on two nodes must hold the same bytes;
    otherwise the checkpoint is torn and must not become the latest.
    """
    merged: dict[str, ManifestFile] = {}
    for files in per_node:
        for entry in files:
            seen = merged.setdefault(entry.path, entry)
            if seen.checksum != entry.checksum or seen.size != entry.size:
                msg = f"{entry.path} differs between nodes ({seen.checksum} vs {entry.checksum})"
                raise CheckpointError(msg)
    return tuple(merged[path] for path in sorted(merged))


def drop_older_local_checkpoints(checkpoint_root: Path, step: int) -> list[int]:
    """Delete every local ``global_step_M`` with M < ``step`` under ``checkpoint_root``: they are in S3, and one
    local copy is all a node needs (verl rotates only rank 0's node's copies).
    """
    removed: list[int] = []
    if not checkpoint_root.is_dir():
        return removed
    for folder in checkpoint_root.iterdir():
        match = STEP_FOLDER.match(folder.name)
        if match and folder.is_dir() and int(match.group(1)) < step:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(int(match.group(1)))
    return sorted(removed)


def _local_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    if not files:
        msg = f"checkpoint folder {folder} holds no files"
        raise CheckpointError(msg)
    return files


class CheckpointStore(CheckpointIndex[ObjectStore]):
    """The checkpoints of one run (one uid) under its S3 prefix, read through the core's index.

    Writing (``claim``, ``upload``/``begin``/``upload_folder``/``commit``, ``prune``) needs a ``writer``; reading
    (``marker``, ``manifest``, ``complete_steps``, ``restore``, ``restore_latest``) does not.
    """

    def __init__(
        self,
        store: ObjectStore,
        prefix: S3Uri,
        *,
        keep: int,
        writer: Writer | None = None,
        run_uid: str | None = None,
    ) -> None:
        if keep < 1:
            msg = f"checkpoints.keep must be at least 1, got {keep}"
            raise ValueError(msg)
        super().__init__(store, prefix)
        self.keep = keep
        self.writer = writer
        self.run_uid = run_uid

    @classmethod
    def for_run(
        cls,
        store: ObjectStore,
        checkpoints_uri: str,
        *,
        namespace: str,
        run_name: str,
        uid: str,
        keep: int,
        writer: Writer | None = None,
    ) -> CheckpointStore:
        prefix = cls.run_prefix(checkpoints_uri, namespace=namespace, run_name=run_name, uid=uid)
        return cls(store, prefix, keep=keep, writer=writer, run_uid=uid)

    @classmethod
    def for_checkpoint_uri(cls, store: ObjectStore, uri: str) -> tuple[CheckpointStore, int]:
        """The (read-only) store holding an explicit ``s3://…/global_step_N`` (``checkpoints.resume``), its step."""
        parent, step = cls.split_checkpoint_uri(uri)
        return cls(store, parent, keep=1), step

    # -- who writes ----------------------------------------------------------------------------

    def _own_writer(self) -> Writer:
        if self.writer is None:
            msg = f"the checkpoint store of {self.prefix} has no writer: it reads only"
            raise ValueError(msg)
        return self.writer

    def _put_marker(self, state: MarkerState, record: CheckpointRecord | None, writer: Writer) -> None:
        self.store.put_bytes(
            self.marker_uri,
            marker_body(record, writer),
            content_type="application/json",
            if_match=state.etag,
            if_absent=state.etag is None,
        )

    def _check_holder(self, state: MarkerState) -> None:
        """Raise WriterFencedError unless the marker names this store's writer."""
        writer = self._own_writer()
        if state.writer != writer:
            holder = "nobody (the marker is gone)" if state.etag is None else str(state.writer)
            msg = f"the checkpoints under {self.prefix} are held by {holder}, not {writer}: a newer attempt runs"
            raise WriterFencedError(msg)

    def claim(self) -> CheckpointRecord | None:
        """Become the run's only checkpoint writer; returns the checkpoint the marker names (None: none yet).

        Call it before restoring anything: an older attempt's commit or prune after this fails. Raises
        WriterFencedError when the marker is held by a newer attempt than this one, and
        ConditionalWritesUnsupportedError when the store does not honour the conditional writes that fence.
        """
        writer = self._own_writer()
        self.check_conditional_writes()
        for _ in range(_MARKER_TRIES):
            state = self.marker_state()
            if state.writer is not None and state.writer.attempt > writer.attempt:
                msg = f"the checkpoints under {self.prefix} are held by newer {state.writer}; {writer} is stale"
                raise WriterFencedError(msg)
            try:
                self._put_marker(state, state.record, writer)
            except PreconditionFailedError:
                continue  # another writer moved it between our read and write: read it again
            if state.writer != writer:
                log.info("%s claimed the checkpoints under %s (held by %s before)", writer, self.prefix, state.writer)
            return state.record
        msg = f"could not claim the checkpoints under {self.prefix}: the marker kept changing"
        raise CheckpointError(msg)

    def check_conditional_writes(self) -> None:
        """Once per prefix: a store that ignores If-Match/If-None-Match would silently turn the fencing off."""
        key = (self.store.endpoint, str(self.prefix))
        if key in _PROBED:
            return
        self.store.check_conditional_writes(self.prefix)
        _PROBED.add(key)

    # -- writing -------------------------------------------------------------------------------

    def upload(self, step: int, folder: Path, *, cancel: threading.Event | None = None) -> CheckpointRecord:
        """Upload ``folder`` as step ``step``; the marker moves only once every file and the manifest are stored.

        Raises TransferCancelledError when ``cancel`` is set midway (the marker still names the previous step),
        WriterFencedError when a newer attempt claimed the checkpoints.
        """
        self.begin(step)
        files = self.upload_folder(step, folder, cancel=cancel)
        if cancel is not None and cancel.is_set():
            raise TransferCancelledError("upload cancelled before the manifest was written")
        return self.commit(step, files)

    def begin(self, step: int) -> None:
        """Check the claim, then withdraw the step's manifest: one left by an earlier try would vouch for a
        half-overwritten folder.
        """
        self._check_holder(self.marker_state())
        self.store.delete(self.step_uri(step).join(MANIFEST_NAME))

    def upload_folder(
        self, step: int, folder: Path, *, cancel: threading.Event | None = None
    ) -> tuple[ManifestFile, ...]:
        """Upload every file of ``folder`` under step ``step`` in parallel, each read once (hashed as it is sent);
        returns their manifest entries. Writes no manifest: call ``commit`` once every node's files are stored.
        """
        destination = self.step_uri(step)
        pairs = [(path, destination.join(path.relative_to(folder).as_posix())) for path in _local_files(folder)]
        sent = self.store.upload_files(pairs, cancel=cancel)
        return tuple(ManifestFile(f.path.relative_to(folder).as_posix(), f.size, f.crc64nvme) for f in sent)

    def commit(self, step: int, files: tuple[ManifestFile, ...]) -> CheckpointRecord:
        """Write the manifest, then move the marker (conditionally on the claim), then prune."""
        writer = self._own_writer()
        if not files:
            msg = f"checkpoint step {step} has no files: nothing to commit"
            raise CheckpointError(msg)
        destination = self.step_uri(step)
        now = _now()
        manifest = CheckpointManifest(step=step, files=files, created=now, writer=writer, run_uid=self.run_uid)
        self._check_holder(self.marker_state())
        self.store.put_bytes(destination.join(MANIFEST_NAME), manifest.to_json(), content_type="application/json")
        record = CheckpointRecord(step=step, uri=str(destination), time=now)
        for _ in range(_MARKER_TRIES):
            state = self.marker_state()
            self._check_holder(state)
            try:
                self._put_marker(state, record, writer)
            except PreconditionFailedError:
                continue  # read it again: a newer claim fences us, anything else is retried
            break
        else:
            msg = f"could not move the marker under {self.prefix} to step {step}: it kept changing"
            raise CheckpointError(msg)
        log.info(
            "checkpoint step %d stored at %s (%d files, %d bytes)", step, destination, len(files), manifest.total_bytes
        )
        self.prune()
        return record

    def prune(self) -> list[int]:
        """Keep the newest ``keep`` complete checkpoints and the marker's; delete older complete ones and any
        incomplete one older than the marker's (newer incomplete ones may still be arriving).

        Only the writer holding the marker prunes, and it checks the claim again before each step it deletes:
        a newer attempt claims before it restores, so nothing it restores is deleted under it.
        """
        state = self.marker_state()
        self._check_holder(state)
        complete = self.complete_steps()
        marker = state.step
        # What a dependent run (spec.model.fromRun) resolved is kept until it no longer needs it (sync_pins).
        kept = set(complete[-self.keep :]) | set(self.pinned_steps())
        if marker is not None:
            kept.add(marker)
        removed = [
            step
            for step in self.all_steps()
            if step not in kept and (step in complete or (marker is not None and step < marker))
        ]
        for step in removed:
            self._check_holder(self.marker_state())
            # Manifest first: a folder must never look complete while its files are going away.
            self.store.delete(self.step_uri(step).join(MANIFEST_NAME))
            self.store.delete_prefix(self.step_uri(step))
        if removed:
            log.info("pruned checkpoint steps %s (keep=%d)", removed, self.keep)
        return removed

    def sync_pins(self, pins: Iterable[CheckpointPin]) -> None:
        """Make the pin objects under ``pins/`` what status.pins says (the operator's list of what dependents
        need): a missing pin is written, one no dependent needs any more is deleted."""
        wanted = {self.pin_uri(pin.step, pin.uid).key: pin for pin in pins}
        present = {stored.uri.key for stored in self.store.list_objects(self.pins_uri)}
        for key in sorted(wanted.keys() - present):
            pin = wanted[key]
            body = json.dumps({"step": pin.step, "run": pin.run, "uid": pin.uid}).encode()
            self.store.put_bytes(self.pin_uri(pin.step, pin.uid), body, content_type="application/json")
            log.info("pinned checkpoint step %d for run %s (spec.model.fromRun)", pin.step, pin.run)
        for key in sorted(present - wanted.keys()):
            self.store.delete(S3Uri(self.prefix.bucket, key))
            log.info("released the pin %s", key.removeprefix(self.pins_uri.as_prefix()))

    # -- reading (the index's), and restoring for verl ----------------------------------------

    def restore(
        self,
        step: int,
        local_root: Path,
        *,
        ranks: Collection[int] | None = None,
        cancel: threading.Event | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> Path:
        """Download step ``step`` into ``local_root/global_step_N`` (only the files ``ranks`` load, see
        ``files_for_ranks``, and of those only the paths ``only`` picks, e.g. weights without optimizer state),
        verify each against the manifest as soon as it lands, and write verl's tracker file so
        ``trainer.resume_mode=auto`` picks it up. Returns the step folder.

        Raises CheckpointError when the checkpoint is incomplete, a file is gone or does not match.
        """
        return self._restore(step, local_root, ranks=ranks, cancel=cancel, only=only)[0]

    def _restore(
        self,
        step: int,
        local_root: Path,
        *,
        ranks: Collection[int] | None = None,
        cancel: threading.Event | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> tuple[Path, CheckpointManifest]:
        target = local_root / step_folder(step)
        manifest = self.fetch(step, target, ranks=ranks, cancel=cancel, only=only)
        wanted = [f for f in files_for_ranks(manifest.files, ranks) if only is None or only(f.path)]
        (local_root / VERL_TRACKER_NAME).write_text(str(step))
        log.info(
            "restored checkpoint step %d from %s (%d of %d files, %d bytes)",
            step,
            self.step_uri(step),
            len(wanted),
            len(manifest.files),
            sum(f.size for f in wanted),
        )
        return target, manifest

    def restore_latest(
        self,
        local_root: Path,
        *,
        ranks: Collection[int] | None = None,
        cancel: threading.Event | None = None,
    ) -> RestoreResult:
        """Restore the marker's checkpoint, else the newest complete one that restores: a checkpoint that is
        incomplete, lost a file or fails its checksum is passed over (and named in the result) for the next older.
        """
        marker = self.marker_step()
        candidates = ([marker] if marker is not None else []) + [
            step for step in reversed(self.complete_steps()) if step != marker
        ]
        skipped: list[tuple[int, str]] = []
        for step in candidates:
            try:
                _, manifest = self._restore(step, local_root, ranks=ranks, cancel=cancel)
            except CheckpointError as error:
                log.warning("skipping checkpoint step %d: %s", step, error)
                shutil.rmtree(local_root / step_folder(step), ignore_errors=True)
                skipped.append((step, str(error)))
                continue
            record = CheckpointRecord(step=step, uri=str(self.step_uri(step)), time=manifest.created)
            return RestoreResult(step, tuple(skipped), record)
        return RestoreResult(None, tuple(skipped))
