"""verl's checkpoint hook and node staging on a real two-node Ray cluster (local raylets) with a real MinIO."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loka_api.contract import MANIFEST_NAME
from loka_api.manifest import Writer
from loka_api.storage import MiB, ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore, WriterFencedError
from loka_trainer.nodes import on_nodes, ray_node_ids, stage_on_node
from loka_trainer.stop_handshake import StopHandshake
from tests.trainer.conftest import wait_for, write_verl_checkpoint


@pytest.fixture(scope="module")
def ray_cluster(cluster: Any) -> Iterator[list[str]]:
    """Two Ray nodes started with the S3 credentials in their environment, as pods get them from the operator."""
    import ray
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        for key, value in cluster.env.items():
            if key.startswith("AWS_"):
                env.setenv(key, value)
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        nodes.add_node(num_cpus=1)
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()
        try:
            yield ray_node_ids()
        finally:
            ray.shutdown()
            nodes.shutdown()  # type: ignore[no-untyped-call]


def test_verl_builds_the_callback_and_every_node_uploads_before_the_marker_moves(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

    from loka_api.render import DEFAULT_CHECKPOINT_CALLBACK

    assert len(ray_cluster) == 2
    run_prefix = s3_prefix.join("ns", "verl-run", "uid-1")
    writer = Writer(3, "verl-run-x7k2p")
    CheckpointStore(object_store, run_prefix, keep=2, writer=writer).claim()  # `loka-trainer run` claims first
    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", str(run_prefix))
    monkeypatch.setenv("LOKA_CHECKPOINT_KEEP", "2")
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", writer.to_env())
    monkeypatch.setenv("LOKA_RUN_UID", "uid-1")
    config = OmegaConf.create({"trainer": {"checkpoint_callback_class": DEFAULT_CHECKPOINT_CALLBACK}})
    callback = build_checkpoint_callback(config)

    for step in (10, 20, 30):
        folder = write_verl_checkpoint(tmp_path / "local", step=step, shard_bytes=64 * 1024)
        callback.on_save(trainer=None, global_step=step, checkpoint_dir=str(folder), async_save=False)

    # One local copy per node: the older steps are in S3, and verl itself rotates only rank 0's node.
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["global_step_30"]
    store = CheckpointStore(object_store, run_prefix, keep=2)
    assert store.complete_steps() == [20, 30]
    assert store.marker_state().step == 30
    assert store.marker_state().writer == writer
    manifest = store.manifest(30)
    assert manifest is not None
    assert (manifest.writer, manifest.run_uid) == (writer, "uid-1")
    assert {f.path for f in manifest.files} == {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    }


def test_async_saves_are_not_uploaded_as_complete(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_trainer.verl_callback import S3CheckpointCallback

    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", str(s3_prefix))
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", "1/run-a1b2c")
    monkeypatch.delenv("LOKA_RUN_NAME", raising=False)
    callback = S3CheckpointCallback(config=None)
    folder = write_verl_checkpoint(tmp_path, step=5, shard_bytes=1024)
    callback.on_save(trainer=None, global_step=5, checkpoint_dir=str(folder), async_save=True)
    assert CheckpointStore(object_store, s3_prefix, keep=3).all_steps() == []


def test_saves_upload_in_the_background_from_a_snapshot_that_survives_verls_rotation(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_api.storage import file_crc64nvme
    from loka_trainer.nodes import UPLOAD_SNAPSHOT_FOLDER
    from loka_trainer.verl_callback import S3CheckpointCallback

    writer = Writer(1, "run-a1b2c")
    CheckpointStore(object_store, s3_prefix, keep=3, writer=writer).claim()  # `loka-trainer run` claims first
    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", str(s3_prefix))
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", writer.to_env())
    callback = S3CheckpointCallback(config=None)
    trainer = SimpleNamespace(total_training_steps=30)  # what verl passes: the trainer, which knows the last step
    local = tmp_path / "local"
    first = write_verl_checkpoint(local, step=10, shard_bytes=512 * 1024)
    written = {p.relative_to(first).as_posix(): file_crc64nvme(p) for p in first.rglob("*") if p.is_file()}

    callback.on_save(trainer=trainer, global_step=10, checkpoint_dir=str(first), async_save=False)
    shutil.rmtree(first)  # verl's max_actor_ckpt_to_keep=1 at its next save, maybe while step 10 still uploads
    last = write_verl_checkpoint(local, step=30, shard_bytes=1024)
    callback.on_save(trainer=trainer, global_step=30, checkpoint_dir=str(last), async_save=False)

    # The last save returned only once both were stored: verl's process ends right after it.
    store = CheckpointStore(object_store, s3_prefix, keep=3)
    assert store.complete_steps() == [10, 30]
    assert store.marker_step() == 30
    manifest = store.manifest(10)
    assert manifest is not None
    assert {f.path: f.crc64nvme for f in manifest.files} == written
    assert not any((local / UPLOAD_SNAPSHOT_FOLDER).rglob("*"))


def test_a_failed_background_upload_stops_training_at_the_next_save(
    ray_cluster: list[str], s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_trainer.verl_callback import S3CheckpointCallback

    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", "s3://no-such-bucket-for-loka/ckpt")
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", "1/run-a1b2c")
    callback = S3CheckpointCallback(config=None)
    trainer = SimpleNamespace(total_training_steps=30)
    callback.on_save(trainer=trainer, global_step=10, checkpoint_dir=str(write_verl_checkpoint(tmp_path, step=10)))
    with pytest.raises(RuntimeError, match="the upload of checkpoint step 10 failed"):
        callback.on_save(trainer=trainer, global_step=20, checkpoint_dir=str(write_verl_checkpoint(tmp_path, step=20)))


def test_an_exception_right_after_a_save_leaves_that_checkpoint_complete_in_s3(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    """verl raises (an NCCL timeout, an OOM, a lost node) while the checkpoint it just saved uploads in the
    background; its driver exits and Ray kills the TaskRunner. The guarded TaskRunner waits for the upload first.
    """
    import ray

    from loka_trainer.verl_driver import guarded_task_runner

    writer = Writer(1, "run-a1b2c")
    CheckpointStore(object_store, s3_prefix, keep=3, writer=writer).claim()  # `loka-trainer run` claims first
    env = {"LOKA_CHECKPOINT_PREFIX": str(s3_prefix), "LOKA_CHECKPOINT_WRITER": writer.to_env()}
    # Large enough that the upload is still running when the exception reaches the driver (~100 MB).
    folder = write_verl_checkpoint(tmp_path, step=10, shard_bytes=24 * MiB)

    class TaskRunner:
        def run(self, env: dict[str, str], folder: str) -> None:
            os.environ.update(env)
            from loka_trainer.verl_callback import S3CheckpointCallback

            callback = S3CheckpointCallback(config=None)
            trainer = SimpleNamespace(total_training_steps=30)
            callback.on_save(trainer=trainer, global_step=10, checkpoint_dir=folder, async_save=False)
            raise RuntimeError("NCCL timeout after the save of step 10")

    actor: Any = ray.remote(num_cpus=0, max_restarts=0)(guarded_task_runner(TaskRunner, hook_verl=False)).remote()
    with pytest.raises(ray.exceptions.RayTaskError, match="NCCL timeout"):
        ray.get(actor.run.remote(env, str(folder)), timeout=300)
    ray.kill(actor)  # what follows when verl's driver exits: its actors die with it

    store = CheckpointStore(object_store, s3_prefix, keep=3)
    assert store.marker_step() == 10
    assert store.complete_steps() == [10]
    manifest = store.manifest(10)
    assert manifest is not None
    assert manifest.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class StepsLikeVerl:
    """What the hooked verl trainer is to the callback: its step, its save, its step end."""

    def __init__(self, callback: Any, folder: Path, total: int = 30) -> None:
        self.checkpoint_callback = callback
        self.folder = folder
        self.total_training_steps = total
        self.global_steps = 0

    def _save_checkpoint(self) -> None:
        saved = write_verl_checkpoint(self.folder, step=self.global_steps, shard_bytes=64 * 1024)
        self.checkpoint_callback.on_save(trainer=self, global_step=self.global_steps, checkpoint_dir=str(saved))


def test_a_fenced_writer_stops_at_the_next_step_end_not_at_the_next_save(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_trainer.verl_callback import S3CheckpointCallback, on_step_end

    old = Writer(1, "run-a1b2c")
    CheckpointStore(object_store, s3_prefix, keep=3, writer=old).claim()
    handshake = StopHandshake(tmp_path / "stop")
    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", str(s3_prefix))
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", old.to_env())
    monkeypatch.setenv("LOKA_STOP_HANDSHAKE", str(handshake.folder))
    trainer = StepsLikeVerl(S3CheckpointCallback(config=None), tmp_path / "local")
    CheckpointStore(object_store, s3_prefix, keep=3, writer=Writer(2, "run-d3e4f")).claim()  # a newer attempt

    trainer.global_steps = 10
    trainer._save_checkpoint()  # every=10: the next save would be 10 steps later
    wait_for(lambda: handshake.uploading_step() is None, timeout=60, what="the background upload to end")
    with pytest.raises(RuntimeError, match="the upload of checkpoint step 10 failed") as failed:
        on_step_end(trainer)  # the end of step 10 itself
    assert isinstance(failed.value.__cause__, WriterFencedError)
    assert CheckpointStore(object_store, s3_prefix, keep=3).complete_steps() == []


def test_a_requested_save_ends_the_step_in_flight_with_a_marked_checkpoint(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_trainer import verl_callback
    from loka_trainer.verl_callback import S3CheckpointCallback, on_step_end

    writer = Writer(1, "run-a1b2c")
    CheckpointStore(object_store, s3_prefix, keep=3, writer=writer).claim()
    handshake = StopHandshake(tmp_path / "stop")
    monkeypatch.setenv("LOKA_CHECKPOINT_PREFIX", str(s3_prefix))
    monkeypatch.setenv("LOKA_CHECKPOINT_WRITER", writer.to_env())
    monkeypatch.setenv("LOKA_STOP_HANDSHAKE", str(handshake.folder))
    trainer = StepsLikeVerl(S3CheckpointCallback(config=None), tmp_path / "local")
    store = CheckpointStore(object_store, s3_prefix, keep=3)

    trainer.global_steps = 10
    trainer._save_checkpoint()  # a periodic save, uploading in the background
    on_step_end(trainer)
    trainer.global_steps = 13
    on_step_end(trainer)
    assert handshake.saved_step() is None
    handshake.request_save("SIGTERM")  # a preemption during step 14
    trainer.global_steps = 14
    monkeypatch.setattr(verl_callback, "HOLD_AFTER_SAVE_S", 2.0)
    began = time.monotonic()
    on_step_end(trainer)

    # No step 15 until the trainer stopped verl: one would train, and at a periodic step save, past step 14.
    assert time.monotonic() - began >= verl_callback.HOLD_AFTER_SAVE_S
    assert handshake.saved_step() == 14
    assert store.marker_step() == 14
    assert store.complete_steps() == [10, 14]
    on_step_end(trainer)  # answered once: the trainer stops verl now
    assert store.complete_steps() == [10, 14]


def test_other_nodes_get_the_model_data_and_restored_checkpoint_at_the_same_paths(
    ray_cluster: list[str], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    model = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": os.urandom(4096)}
    for name, body in model.items():
        object_store.put_bytes(s3_prefix.join("model", name), body)
    train = s3_prefix.join("data", "train.parquet")
    object_store.put_bytes(train, b"PAR1 train")
    run_prefix = s3_prefix.join("ckpt", "ns", "run", "uid-1")
    store = CheckpointStore(object_store, run_prefix, keep=2, writer=Writer(1, "run-a1b2c"))
    store.claim()
    store.upload(7, write_verl_checkpoint(tmp_path / "src", step=7, world_size=4))
    spec = {"image": "x", "model": {"uri": str(s3_prefix.join("model"))}, "data": {"train": str(train)}}
    work = tmp_path / "work"

    resume = (str(run_prefix), 7)
    hosts = on_nodes(stage_on_node, json.dumps(spec), str(work), None, resume, frozenset({1}), skip_current=True)

    assert len(hosts) == 1  # the one node that is not this one
    assert (work / "model" / "model.safetensors").read_bytes() == model["model.safetensors"]
    assert (work / "data" / "train.parquet").read_bytes() == b"PAR1 train"
    assert (work / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "7"
    actor = work / "checkpoints" / "global_step_7" / "actor"
    # The node that runs rank 1 gets rank 1's shards and the shared files, not the other ranks' shards.
    assert sorted(p.name for p in actor.glob("*_rank_*")) == [
        f"{kind}_world_size_4_rank_1.pt" for kind in ("extra_state", "model", "optim")
    ]
    assert (actor / "huggingface" / "config.json").is_file()
    assert (work / "checkpoints" / "global_step_7" / "data.pt").is_file()


DRIVER = """
import json, os, sys
import ray
# What verl.trainer.main_ppo does: join the cluster with its own runtime_env (the actor variables).
ray.init(address=sys.argv[1], runtime_env={"env_vars": json.loads(sys.argv[2])}, log_to_driver=False)
@ray.remote(num_cpus=0)
def actor_sees():
    return {k: os.environ.get(k) for k in ("LOKA_RUN_NAME", "LOKA_CHECKPOINT_PREFIX", "LOKA_CHECKPOINT_WRITER",
                                           "AWS_ENDPOINT_URL")}
print(json.dumps(ray.get(actor_sees.remote())))
"""


def test_verl_driver_joins_a_rayjob_whose_runtime_env_sets_the_same_variables(
    ray_cluster: list[str], tmp_path: Path
) -> None:
    import ray
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from loka_api import TrainingRunSpec
    from loka_trainer.engines import EngineJob
    from loka_trainer.engines.verl import actor_environment, process_environment
    from loka_trainer.staging import StagedInputs

    spec = TrainingRunSpec.model_validate(
        {"image": "x", "model": {"uri": "hf://a/b"}, "data": {"train": "s3://loka/t"}}
    )
    store = CheckpointStore(
        ObjectStore(endpoint_url="http://127.0.0.1:9"), S3Uri("loka", "ck/ns/run/uid"), keep=2, writer=Writer(2, "c")
    )
    job = EngineJob(
        spec=spec,
        run_name="run",
        namespace="ns",
        inputs=StagedInputs("a/b", tmp_path / "t.parquet", None),
        work_dir=tmp_path,
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
        checkpoints=store,
        resume=None,
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode="offline",
    )
    # The RayJob's runtimeEnvYAML, as the operator writes it (KubeRay hands it to the entrypoint like this).
    rayjob_env = {"LOKA_RUN_NAME": "run", "LOKA_RUN_NAMESPACE": "ns", "AWS_ENDPOINT_URL": "http://minio:9000"}
    job_config = json.dumps({"runtime_env": {"env_vars": rayjob_env}})
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), RAY_JOB_CONFIG_JSON_ENV_VAR: job_config}
    address = ray.get_runtime_context().gcs_address
    argv = [sys.executable, "-c", DRIVER, address, json.dumps(actor_environment(job, {}))]

    refused = subprocess.run(argv, env=base, capture_output=True, text=True, check=False, timeout=120)
    assert refused.returncode != 0
    assert "Failed to merge the Job's runtime env" in refused.stderr  # why the override is needed

    joined = subprocess.run(
        argv, env=process_environment(job, base), capture_output=True, text=True, check=False, timeout=120
    )
    assert joined.returncode == 0, joined.stderr[-3000:]
    seen = json.loads(joined.stdout.strip().splitlines()[-1])
    assert seen == {
        "LOKA_RUN_NAME": "run",
        "LOKA_CHECKPOINT_PREFIX": "s3://loka/ck/ns/run/uid",
        "LOKA_CHECKPOINT_WRITER": "2/c",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }


def test_metrics_written_on_another_node_reach_the_follower(ray_cluster: list[str], tmp_path: Path) -> None:
    from loka_trainer.nodes import FileOnAnyNode
    from loka_trainer.step_metrics import MetricsFollower, MetricsWriter

    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in (1, 2):
        writer.log(step, {"training/global_step": step, "critic/score/mean": step / 4})
    # As seen from the head when verl's driver actor runs on a worker: not on this machine.
    reader = FileOnAnyNode(local_reader=lambda _path, _offset: (-1, b""))
    follower = MetricsFollower(path, reader=reader)
    assert [(m.step, m.reward_mean) for m in follower.poll()] == [(1, 0.25), (2, 0.5)]
    assert reader.node in ray_cluster
    writer.log(3, {"training/global_step": 3})
    writer.close()
    assert [m.step for m in follower.poll()] == [3]  # read on the node found first


def test_verls_task_runner_stays_on_the_drivers_node_where_the_wandb_key_is(ray_cluster: list[str]) -> None:
    """verl creates its TaskRunner with a plain `.remote()`; the driver wrapper pins each one to its own node."""
    import ray

    from loka_trainer.verl_driver import OnThisNode

    @ray.remote(num_cpus=0.5)
    class TaskRunner:
        def node(self) -> str:
            return str(ray.get_runtime_context().get_node_id())

    here = ray.get_runtime_context().get_node_id()
    # Two of them fill this node's one CPU: left alone, Ray's hybrid policy spills the second to the other node.
    runners = [OnThisNode(TaskRunner).remote(), OnThisNode(TaskRunner).options(name="second").remote()]
    assert ray.get([runner.node.remote() for runner in runners], timeout=120) == [here, here]
    for runner in runners:
        ray.kill(runner)
