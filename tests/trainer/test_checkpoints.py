"""Checkpoints in a real MinIO: manifest, marker, prune and resume, including uploads that die midway."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loka_api.contract import MANIFEST_NAME
from loka_trainer.checkpoints import VERL_TRACKER_NAME, CheckpointError, CheckpointStore
from loka_trainer.storage import ObjectStore, S3Uri, TransferCancelledError
from tests.trainer.conftest import write_verl_checkpoint


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_for(predicate: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def cancel_once_upload_started(object_store: ObjectStore, uri: S3Uri) -> threading.Event:
    """An event set (like SIGTERM would) as soon as the first object of ``uri`` is visible in S3."""
    cancel = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(True for _ in object_store.list_objects(uri)):
            time.sleep(0.02)
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    return cancel


def test_upload_stores_every_file_with_a_manifest_and_moves_the_marker(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    folder = write_verl_checkpoint(tmp_path, step=10)
    record = store.upload(10, folder)

    assert record.step == 10
    assert record.uri == f"s3://{s3_prefix.bucket}/{s3_prefix.key}/global_step_10"
    base = f"{s3_prefix.key}/global_step_10/"
    stored = {o.uri.key.removeprefix(base): o.size for o in object_store.list_objects(store.step_uri(10))}
    expected = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in stored.items() if k != MANIFEST_NAME} == expected
    manifest = store.manifest(10)
    assert manifest is not None
    assert {f.path: f.sha256 for f in manifest.files} == tree_digest(folder)
    marker = json.loads(object_store.get_bytes(store.marker_uri) or b"{}")
    assert marker["step"] == 10
    assert marker["uri"] == record.uri


def test_resume_restores_the_latest_checkpoint_byte_for_byte_for_verl(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    store.upload(5, write_verl_checkpoint(tmp_path / "a", step=5))
    latest = write_verl_checkpoint(tmp_path / "a", step=10)
    store.upload(10, latest)

    restore_root = tmp_path / "restore"
    assert store.restore_latest(restore_root) == 10
    assert tree_digest(restore_root / "global_step_10") == tree_digest(latest)
    assert (restore_root / VERL_TRACKER_NAME).read_text() == "10"  # verl's resume_mode=auto reads this


def test_prune_keeps_only_the_newest_checkpoints(object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=2)
    for step in (1, 2, 3, 4):
        store.upload(step, write_verl_checkpoint(tmp_path, step=step, shard_bytes=1024))
    assert store.all_steps() == [3, 4]
    assert store.complete_steps() == [3, 4]
    assert store.latest_complete() == 4


def test_cancelled_upload_leaves_the_marker_on_the_previous_checkpoint(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    store.upload(1, write_verl_checkpoint(tmp_path, step=1, shard_bytes=1024))
    big = write_verl_checkpoint(tmp_path, step=2, shard_bytes=8 * 1024 * 1024, world_size=8)
    with pytest.raises(TransferCancelledError):
        store.upload(2, big, cancel=cancel_once_upload_started(object_store, store.step_uri(2)))
    assert store.marker_step() == 1
    assert store.complete_steps() == [1]
    assert store.restore_latest(tmp_path / "restore") == 1


def test_upload_killed_midway_is_never_picked_for_resume(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    first = write_verl_checkpoint(tmp_path / "ok", step=50, shard_bytes=4096)
    store.upload(50, first)
    big = write_verl_checkpoint(tmp_path / "big", step=100, shard_bytes=16 * 1024 * 1024, world_size=8)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from loka_trainer.checkpoints import CheckpointStore\n"
        "from loka_trainer.storage import ObjectStore, S3Uri\n"
        "store = CheckpointStore(ObjectStore(concurrency=2), S3Uri.parse(sys.argv[1]), keep=3)\n"
        "store.upload(100, Path(sys.argv[2]))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(s3_prefix), str(big)], env={**os.environ, **s3_env})
    try:
        wait_for(lambda: any(True for _ in object_store.list_objects(store.step_uri(100))), timeout=60, what="upload")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the upload finished before it could be killed"

    assert store.all_steps() == [50, 100]  # some of step 100 landed ...
    assert store.complete_steps() == [50]  # ... but it is not complete
    assert store.marker_step() == 50
    restore_root = tmp_path / "restore"
    assert store.restore_latest(restore_root) == 50
    assert tree_digest(restore_root / "global_step_50") == tree_digest(first)
    assert not (restore_root / "global_step_100").exists()


def test_retrying_a_step_first_withdraws_its_old_manifest(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    store.upload(7, write_verl_checkpoint(tmp_path / "a", step=7, shard_bytes=1024))
    rewritten = write_verl_checkpoint(tmp_path / "b", step=7, shard_bytes=8 * 1024 * 1024, world_size=8)
    # Wait for a new file (not the old manifest) to land before cancelling.
    with pytest.raises(TransferCancelledError):
        store.upload(7, rewritten, cancel=cancel_once_upload_started(object_store, store.step_uri(7).join("actor")))
    # Half the new files and the old manifest together would restore a torn checkpoint.
    assert store.manifest(7) is None
    assert store.restore_latest(tmp_path / "restore") is None


def test_resume_skips_a_checkpoint_that_no_longer_matches_its_manifest(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    store.upload(1, write_verl_checkpoint(tmp_path, step=1, shard_bytes=1024))
    store.upload(2, write_verl_checkpoint(tmp_path, step=2, shard_bytes=1024))
    object_store.put_bytes(store.step_uri(2).join("actor/model_world_size_2_rank_1.pt"), b"bit rot")
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        store.restore(2, tmp_path / "direct")
    assert store.restore_latest(tmp_path / "restore") == 1
    assert not (tmp_path / "restore" / "global_step_2").exists()


def test_explicit_resume_uri_restores_that_step_even_from_another_run(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    other = CheckpointStore(object_store, s3_prefix.join("other-run"), keep=3)
    original = write_verl_checkpoint(tmp_path, step=30, shard_bytes=2048)
    other.upload(30, original)
    source, step = CheckpointStore.for_checkpoint_uri(object_store, f"{other.step_uri(30)}/")
    folder = source.restore(step, tmp_path / "restore")
    assert step == 30
    assert tree_digest(folder) == tree_digest(original)
