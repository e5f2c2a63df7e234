"""Checkpoints in S3: upload with a manifest, move the "latest" marker last, prune, find and restore for resume.

The layout under the run's prefix is the core's contract (``loka_api.contract``): a step folder per checkpoint,
its manifest (every file's path, size and sha256, written after all files) and the marker (written after the
manifest). A checkpoint is complete exactly when its manifest exists, and resume only ever restores complete ones.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loka_api.contract import (
    MANIFEST_NAME,
    MARKER_NAME,
    STEP_FOLDER,
    STEP_FOLDER_PREFIX,
    run_checkpoint_prefix,
    step_folder,
)
from loka_api.manifest import CheckpointManifest, ManifestFile, sha256_file
from loka_trainer.storage import ObjectStore, S3Uri, TransferCancelledError

log = logging.getLogger(__name__)

# verl's resume_mode=auto reads this file under trainer.default_local_dir.
VERL_TRACKER_NAME = "latest_checkpointed_iteration.txt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class CheckpointRecord:
    """What status.checkpoint shows: the step, where it is, and when it became complete."""

    step: int
    uri: str
    time: str


def merge_node_files(per_node: list[tuple[ManifestFile, ...]]) -> tuple[ManifestFile, ...]:
    """One manifest from the files each Ray node uploaded. A path on two nodes must hold the same bytes;
    otherwise the checkpoint is torn and must not become the latest.
    """
    merged: dict[str, ManifestFile] = {}
    for files in per_node:
        for entry in files:
            seen = merged.setdefault(entry.path, entry)
            if seen.sha256 != entry.sha256 or seen.size != entry.size:
                msg = f"{entry.path} differs between nodes (sha256 {seen.sha256[:12]}… vs {entry.sha256[:12]}…)"
                raise CheckpointError(msg)
    return tuple(merged[path] for path in sorted(merged))


def _local_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    if not files:
        msg = f"checkpoint folder {folder} holds no files"
        raise CheckpointError(msg)
    return files


class CheckpointStore:
    """The checkpoints of one run under its S3 prefix."""

    def __init__(self, store: ObjectStore, prefix: S3Uri, *, keep: int) -> None:
        if keep < 1:
            msg = f"checkpoints.keep must be at least 1, got {keep}"
            raise ValueError(msg)
        self.store = store
        self.prefix = prefix
        self.keep = keep

    @classmethod
    def for_run(
        cls, store: ObjectStore, checkpoints_uri: str, *, namespace: str, run_name: str, keep: int
    ) -> CheckpointStore:
        return cls(store, S3Uri.parse(run_checkpoint_prefix(checkpoints_uri, namespace, run_name)), keep=keep)

    @classmethod
    def for_checkpoint_uri(cls, store: ObjectStore, uri: str) -> tuple[CheckpointStore, int]:
        """The store holding an explicit ``s3://…/global_step_N`` (``checkpoints.resume``) and its step."""
        parsed = S3Uri.parse(uri.rstrip("/"))
        match = STEP_FOLDER.match(parsed.name)
        if match is None:
            msg = f"checkpoints.resume: expected auto, never or s3://…/{STEP_FOLDER_PREFIX}<N>, got {uri!r}"
            raise ValueError(msg)
        parent = S3Uri(parsed.bucket, parsed.key.rpartition("/")[0])
        return cls(store, parent, keep=1), int(match.group(1))

    def step_uri(self, step: int) -> S3Uri:
        return self.prefix.join(step_folder(step))

    @property
    def marker_uri(self) -> S3Uri:
        return self.prefix.join(MARKER_NAME)

    # -- writing -------------------------------------------------------------------------------

    def upload(self, step: int, folder: Path, *, cancel: threading.Event | None = None) -> CheckpointRecord:
        """Upload ``folder`` as step ``step``; the marker moves only once every file and the manifest are stored.

        Raises TransferCancelledError when ``cancel`` is set midway; the marker then still names the previous step.
        """
        self.begin(step)
        files = self.upload_folder(step, folder, cancel=cancel)
        if cancel is not None and cancel.is_set():
            raise TransferCancelledError("upload cancelled before the manifest was written")
        return self.commit(step, files)

    def begin(self, step: int) -> None:
        """Withdraw the step's manifest: one left from an earlier attempt would vouch for a half-overwritten folder."""
        self.store.delete(self.step_uri(step).join(MANIFEST_NAME))

    def upload_folder(
        self, step: int, folder: Path, *, cancel: threading.Event | None = None
    ) -> tuple[ManifestFile, ...]:
        """Upload every file of ``folder`` under step ``step`` in parallel; returns their manifest entries.
        Writes no manifest: call ``commit`` once every node's files are stored.
        """
        destination = self.step_uri(step)
        files = _local_files(folder)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="sha256") as hashers:
            # Hashing runs alongside the upload; both read the same page-cached files.
            digests = [hashers.submit(sha256_file, path) for path in files]
            self.store.upload_files(
                ((path, destination.join(path.relative_to(folder).as_posix())) for path in files), cancel=cancel
            )
            return tuple(
                ManifestFile(path.relative_to(folder).as_posix(), path.stat().st_size, digest.result())
                for path, digest in zip(files, digests, strict=True)
            )

    def commit(self, step: int, files: tuple[ManifestFile, ...]) -> CheckpointRecord:
        """Write the manifest, then move the marker, then prune: the step becomes the one resume picks."""
        if not files:
            msg = f"checkpoint step {step} has no files: nothing to commit"
            raise CheckpointError(msg)
        destination = self.step_uri(step)
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        manifest = CheckpointManifest(step=step, files=files, created=now)
        self.store.put_bytes(destination.join(MANIFEST_NAME), manifest.to_json(), content_type="application/json")
        record = CheckpointRecord(step=step, uri=str(destination), time=now)
        marker = {"step": step, "uri": record.uri, "time": now}
        self.store.put_bytes(self.marker_uri, json.dumps(marker).encode(), content_type="application/json")
        log.info(
            "checkpoint step %d stored at %s (%d files, %d bytes)", step, destination, len(files), manifest.total_bytes
        )
        self.prune()
        return record

    def prune(self) -> list[int]:
        """Keep the newest ``keep`` complete checkpoints (always the marker's); delete the rest and any incomplete."""
        complete = self.complete_steps()
        marker = self.marker_step()
        kept = set(complete[-self.keep :])
        if marker is not None and marker in complete:
            kept.add(marker)
        removed = [step for step in self.all_steps() if step not in kept]
        for step in removed:
            # Manifest first: a folder must never look complete while its files are going away.
            self.store.delete(self.step_uri(step).join(MANIFEST_NAME))
            self.store.delete_prefix(self.step_uri(step))
        if removed:
            log.info("pruned checkpoint steps %s (keep=%d)", removed, self.keep)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Every ``global_step_N`` folder under the prefix, complete or not, oldest first."""
        steps = [int(m.group(1)) for name in self.store.list_folders(self.prefix) if (m := STEP_FOLDER.match(name))]
        return sorted(steps)

    def manifest(self, step: int) -> CheckpointManifest | None:
        raw = self.store.get_bytes(self.step_uri(step).join(MANIFEST_NAME))
        return None if raw is None else CheckpointManifest.from_json(raw)

    def complete_steps(self) -> list[int]:
        return [step for step in self.all_steps() if self.store.exists(self.step_uri(step).join(MANIFEST_NAME))]

    def marker(self) -> CheckpointRecord | None:
        """The checkpoint the "latest" marker names, or None when there is no (readable) marker."""
        raw = self.store.get_bytes(self.marker_uri)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            return CheckpointRecord(step=int(body["step"]), uri=str(body["uri"]), time=str(body["time"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable marker %s", self.marker_uri)
            return None

    def marker_step(self) -> int | None:
        record = self.marker()
        return None if record is None else record.step

    def latest_complete(self) -> int | None:
        """The marker's step when it is complete, else the newest complete step, else None."""
        marker = self.marker_step()
        if marker is not None and self.manifest(marker) is not None:
            return marker
        complete = self.complete_steps()
        return complete[-1] if complete else None

    def restore(
        self,
        step: int,
        local_root: Path,
        *,
        cancel: threading.Event | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> Path:
        """Download step ``step`` into ``local_root/global_step_N``, verify every file against the manifest,
        and write verl's tracker file so ``trainer.resume_mode=auto`` picks it up. Returns the step folder.
        ``only`` picks the files by their path in the checkpoint (e.g. weights without optimizer state).
        """
        manifest = self.manifest(step)
        if manifest is None:
            msg = f"checkpoint {self.step_uri(step)} is incomplete: it has no {MANIFEST_NAME}"
            raise CheckpointError(msg)
        if only is not None:
            manifest = CheckpointManifest(
                manifest.step, tuple(f for f in manifest.files if only(f.path)), manifest.created
            )
        target = local_root / step_folder(step)
        source = self.step_uri(step)
        pairs = [(source.join(f.path), target / f.path) for f in manifest.files]
        for _, path in pairs:
            if not path.resolve().is_relative_to(target.resolve()):
                msg = f"manifest of {source} names a path outside the checkpoint: {path}"
                raise CheckpointError(msg)
        self.store.download_files(pairs, cancel=cancel)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify") as pool:
            actual = list(pool.map(lambda f: (f, sha256_file(target / f.path)), manifest.files))
        for expected, digest in actual:
            size = (target / expected.path).stat().st_size
            if size != expected.size or digest != expected.sha256:
                msg = (
                    f"checkpoint {source}: {expected.path} does not match its manifest "
                    f"(size {size} vs {expected.size}, sha256 {digest[:12]}… vs {expected.sha256[:12]}…)"
                )
                raise CheckpointError(msg)
        (local_root / VERL_TRACKER_NAME).write_text(str(step))
        log.info("restored checkpoint step %d from %s (%d bytes)", step, source, manifest.total_bytes)
        return target

    def restore_latest(self, local_root: Path, *, cancel: threading.Event | None = None) -> int | None:
        """Restore the newest complete checkpoint that verifies; fall back to older ones. None when there is none."""
        candidates = self.complete_steps()
        latest = self.latest_complete()
        ordered = ([latest] if latest is not None else []) + [s for s in reversed(candidates) if s != latest]
        for step in ordered:
            try:
                self.restore(step, local_root, cancel=cancel)
            except CheckpointError as error:
                log.warning("skipping checkpoint step %d: %s", step, error)
                shutil.rmtree(local_root / step_folder(step), ignore_errors=True)
                continue
            return step
        return None
