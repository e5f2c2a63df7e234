"""Checkpoints in a real MinIO: manifest, marker, prune and resume, including uploads that die midway, attempts
that overlap (fencing by conditional writes) and objects that vanish under a restore.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loka_api.checkpoints import CheckpointError
from loka_api.contract import MANIFEST_NAME
from loka_api.manifest import Writer
from loka_api.storage import (
    ConditionalWritesUnsupportedError,
    ObjectStore,
    PreconditionFailedError,
    S3Uri,
    TransferCancelledError,
    file_crc64nvme,
)
from loka_trainer.checkpoints import VERL_TRACKER_NAME, CheckpointStore, WriterFencedError
from tests.trainer.conftest import wait_for, write_verl_checkpoint

FIRST = Writer(1, "run-a1b2c")


def claimed(object_store: ObjectStore, prefix: S3Uri, *, keep: int, writer: Writer = FIRST) -> CheckpointStore:
    """The run's checkpoints as one attempt writes them: claimed before anything else, as the runner does."""
    store = CheckpointStore(object_store, prefix, keep=keep, writer=writer, run_uid="uid-1")
    store.claim()
    return store


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_crc64nvme(p) for p in sorted(folder.rglob("*")) if p.is_file()}


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
    store = claimed(object_store, s3_prefix, keep=3)
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
    assert {f.path: f.crc64nvme for f in manifest.files} == tree_digest(folder)
    marker = json.loads(object_store.get_bytes(store.marker_uri) or b"{}")
    assert marker["step"] == 10
    assert marker["uri"] == record.uri


def test_resume_restores_the_latest_checkpoint_byte_for_byte_for_verl(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    store.upload(5, write_verl_checkpoint(tmp_path / "a", step=5))
    latest = write_verl_checkpoint(tmp_path / "a", step=10)
    store.upload(10, latest)

    restore_root = tmp_path / "restore"
    assert store.restore_latest(restore_root).step == 10
    assert tree_digest(restore_root / "global_step_10") == tree_digest(latest)
    assert (restore_root / VERL_TRACKER_NAME).read_text() == "10"  # verl's resume_mode=auto reads this


def test_prune_keeps_only_the_newest_checkpoints(object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path) -> None:
    store = claimed(object_store, s3_prefix, keep=2)
    for step in (1, 2, 3, 4):
        store.upload(step, write_verl_checkpoint(tmp_path, step=step, shard_bytes=1024))
    assert store.all_steps() == [3, 4]
    assert store.complete_steps() == [3, 4]
    assert store.latest_complete() == 4


def test_cancelled_upload_leaves_the_marker_on_the_previous_checkpoint(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    store.upload(1, write_verl_checkpoint(tmp_path, step=1, shard_bytes=1024))
    big = write_verl_checkpoint(tmp_path, step=2, shard_bytes=8 * 1024 * 1024, world_size=8)
    with pytest.raises(TransferCancelledError):
        store.upload(2, big, cancel=cancel_once_upload_started(object_store, store.step_uri(2)))
    assert store.marker_step() == 1
    assert store.complete_steps() == [1]
    assert store.restore_latest(tmp_path / "restore").step == 1


def test_upload_killed_midway_is_never_picked_for_resume(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    first = write_verl_checkpoint(tmp_path / "ok", step=50, shard_bytes=4096)
    store.upload(50, first)
    big = write_verl_checkpoint(tmp_path / "big", step=100, shard_bytes=16 * 1024 * 1024, world_size=8)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from loka_api.manifest import Writer\n"
        "from loka_trainer.checkpoints import CheckpointStore\n"
        "from loka_api.storage import ObjectStore, S3Uri\n"
        "writer = Writer.from_env(sys.argv[3])\n"
        "store = CheckpointStore(ObjectStore(concurrency=2), S3Uri.parse(sys.argv[1]), keep=3, writer=writer)\n"
        "store.upload(100, Path(sys.argv[2]))\n"
    )
    argv = [sys.executable, "-c", script, str(s3_prefix), str(big), FIRST.to_env()]
    child = subprocess.Popen(argv, env={**os.environ, **s3_env})
    try:
        wait_for(
            lambda: any(True for _ in object_store.list_objects(store.step_uri(100))),
            timeout=60,
            what="upload",
            interval=0.05,
        )
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the upload finished before it could be killed"

    assert store.all_steps() == [50, 100]  # some of step 100 landed ...
    assert store.complete_steps() == [50]  # ... but it is not complete
    assert store.marker_step() == 50
    restore_root = tmp_path / "restore"
    assert store.restore_latest(restore_root).step == 50
    assert tree_digest(restore_root / "global_step_50") == tree_digest(first)
    assert not (restore_root / "global_step_100").exists()


def test_retrying_a_step_first_withdraws_its_old_manifest(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    store.upload(7, write_verl_checkpoint(tmp_path / "a", step=7, shard_bytes=1024))
    rewritten = write_verl_checkpoint(tmp_path / "b", step=7, shard_bytes=8 * 1024 * 1024, world_size=8)
    # Wait for a new file (not the old manifest) to land before cancelling.
    with pytest.raises(TransferCancelledError):
        store.upload(7, rewritten, cancel=cancel_once_upload_started(object_store, store.step_uri(7).join("actor")))
    # Half the new files and the old manifest together would restore a torn checkpoint.
    assert store.manifest(7) is None
    assert store.restore_latest(tmp_path / "restore").step is None


def test_resume_skips_a_checkpoint_that_no_longer_matches_its_manifest(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    store.upload(1, write_verl_checkpoint(tmp_path, step=1, shard_bytes=1024))
    store.upload(2, write_verl_checkpoint(tmp_path, step=2, shard_bytes=1024))
    object_store.put_bytes(store.step_uri(2).join("actor/model_world_size_2_rank_1.pt"), b"bit rot")
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        store.restore(2, tmp_path / "direct")
    result = store.restore_latest(tmp_path / "restore")
    assert result.step == 1
    assert [step for step, _ in result.skipped] == [2]
    assert not (tmp_path / "restore" / "global_step_2").exists()


def test_explicit_resume_uri_restores_that_step_even_from_another_run(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    other = claimed(object_store, s3_prefix.join("other-run"), keep=3)
    original = write_verl_checkpoint(tmp_path, step=30, shard_bytes=2048)
    other.upload(30, original)
    source, step = CheckpointStore.for_checkpoint_uri(object_store, f"{other.step_uri(30)}/")
    folder = source.restore(step, tmp_path / "restore")
    assert step == 30
    assert tree_digest(folder) == tree_digest(original)


# ------------------------------------------------------------------------------- attempts that overlap


def test_minio_refuses_conditional_writes_whose_condition_no_longer_holds(
    object_store: ObjectStore, s3_prefix: S3Uri
) -> None:
    marker = s3_prefix.join("latest")
    first = object_store.put_bytes(marker, b"1", if_absent=True)
    with pytest.raises(PreconditionFailedError):
        object_store.put_bytes(marker, b"2", if_absent=True)  # If-None-Match: * over an existing object
    second = object_store.put_bytes(marker, b"3", if_match=first)
    with pytest.raises(PreconditionFailedError):
        object_store.put_bytes(marker, b"4", if_match=first)  # If-Match on a version that was replaced
    with pytest.raises(PreconditionFailedError):
        object_store.put_bytes(s3_prefix.join("gone"), b"5", if_match=second)  # If-Match on no object at all
    assert object_store.get_bytes(marker) == b"3"

    # Many writers holding the same version race: MinIO lets exactly one of them through.
    outcomes: list[str] = []

    def race(body: bytes) -> None:
        try:
            object_store.put_bytes(marker, body, if_match=second)
            outcomes.append("won")
        except PreconditionFailedError:
            outcomes.append("refused")

    racers = [threading.Thread(target=race, args=(f"racer {i}".encode(),)) for i in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]


@pytest.mark.parametrize(
    ("mode", "lacking"),
    [
        ("ignore", "ignores If-None-Match on PutObject"),
        ("refuse", "answers 501 Not Implemented to a PutObject with If-None-Match"),
    ],
)
def test_a_store_without_conditional_writes_is_refused_naming_what_it_lacks(  # noqa: PLR0917
    s3_env: dict[str, str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, mode: str, lacking: str
) -> None:
    from localcluster.s3_proxy import ConditionalWriteStandIn

    keys = (s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"])
    with ConditionalWriteStandIn(s3_env["AWS_ENDPOINT_URL"], *keys, mode=mode) as standin:  # type: ignore[arg-type]
        through = ObjectStore(endpoint_url=standin.url)
        through.put_bytes(s3_prefix.join("plain"), b"plain writes pass")  # the stand-in is a working store
        store = CheckpointStore(through, s3_prefix.join("run"), keep=3, writer=FIRST)
        with pytest.raises(ConditionalWritesUnsupportedError) as refused:
            store.claim()
        with pytest.raises(ConditionalWritesUnsupportedError):
            store.claim()  # refused again: only a store that passed is remembered

    message = str(refused.value)
    assert f"the S3 store at {standin.url} {lacking}" in message
    assert "AWS S3, MinIO" in message and "spec.storage.endpoint" in message
    assert object_store.get_bytes(s3_prefix.join("plain")) == b"plain writes pass"
    # Nothing half created: no marker, no probe object left behind.
    assert [obj.uri.key for obj in object_store.list_objects(s3_prefix.join("run"))] == []


def test_an_older_attempt_can_neither_move_the_marker_nor_prune_once_a_newer_one_claimed(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    old = claimed(object_store, s3_prefix, keep=1, writer=Writer(1, "run-old11"))
    kept = write_verl_checkpoint(tmp_path / "a", step=4, shard_bytes=4096)
    old.upload(4, kept)

    # Attempt 1 is uploading step 8 when it is preempted; attempt 2 claims the checkpoints to restore step 4.
    old.begin(8)
    in_flight = old.upload_folder(8, write_verl_checkpoint(tmp_path / "b", step=8, shard_bytes=4096))
    new = CheckpointStore(object_store, s3_prefix, keep=1, writer=Writer(2, "run-new22"), run_uid="uid-1")
    assert new.claim() is not None
    with pytest.raises(WriterFencedError, match="attempt 2"):
        old.commit(8, in_flight)  # with keep 1 it would move the marker to 8 and prune step 4
    with pytest.raises(WriterFencedError, match="attempt 2"):
        old.upload(12, write_verl_checkpoint(tmp_path / "c", step=12, shard_bytes=4096))

    state = new.marker_state()
    assert (state.step, state.writer) == (4, Writer(2, "run-new22"))
    assert new.complete_steps() == [4], "the older attempt's step never became complete, step 4 was not pruned"
    assert new.restore_latest(tmp_path / "restore").step == 4
    assert tree_digest(tmp_path / "restore" / "global_step_4") == tree_digest(kept)
    with pytest.raises(WriterFencedError):
        old.prune()
    with pytest.raises(WriterFencedError, match="stale"):
        old.claim()  # an attempt that was replaced never takes the checkpoints back

    new.upload(6, write_verl_checkpoint(tmp_path / "d", step=6, shard_bytes=4096))
    manifest = new.manifest(6)
    assert manifest is not None
    assert (manifest.writer, manifest.run_uid) == (Writer(2, "run-new22"), "uid-1")
    assert new.complete_steps() == [6]
    assert new.all_steps() == [6, 8]  # the older attempt's incomplete step 8 waits to be overwritten or passed


def test_restore_falls_back_past_a_checkpoint_that_lost_an_object(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    older = write_verl_checkpoint(tmp_path / "a", step=4, shard_bytes=2048)
    store.upload(4, older)
    store.upload(8, write_verl_checkpoint(tmp_path / "b", step=8, shard_bytes=2048))
    # Pruned (or deleted by hand) after the restore read the manifest: the object is gone, the manifest is not.
    object_store.delete(store.step_uri(8).join("actor/optim_world_size_2_rank_1.pt"))

    result = store.restore_latest(tmp_path / "restore")

    assert result.step == 4
    assert tree_digest(tmp_path / "restore" / "global_step_4") == tree_digest(older)
    assert [step for step, _ in result.skipped] == [8]
    assert "optim_world_size_2_rank_1.pt does not exist" in result.describe_skipped()
    assert not (tmp_path / "restore" / "global_step_8").exists()


def test_a_node_restores_the_shared_files_and_only_the_shards_of_its_ranks(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    store = claimed(object_store, s3_prefix, keep=3)
    original = write_verl_checkpoint(tmp_path / "src", step=10, shard_bytes=4096, world_size=4)
    store.upload(10, original)

    worker = store.restore(10, tmp_path / "worker", ranks=frozenset({2, 3}))
    head = store.restore(10, tmp_path / "head", ranks=frozenset())  # no GPU, no rank

    everything = tree_digest(original)
    shards = {path for path in everything if "_rank_" in path}
    assert tree_digest(worker) == {
        p: d for p, d in everything.items() if p not in shards or "_rank_2" in p or "_rank_3" in p
    }
    assert tree_digest(head) == {p: d for p, d in everything.items() if p not in shards}
    assert (tmp_path / "head" / VERL_TRACKER_NAME).read_text() == "10"
