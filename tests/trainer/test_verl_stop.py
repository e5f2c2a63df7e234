"""SIGTERM with the verl engine's process handling: `loka-trainer run` joined to a local Ray cluster (as in a RayJob)
launches verl in its own process session, and verl trains in a Ray actor outside that session.

verl itself needs GPUs, so a stand-in (tests/trainer/verl_standin.py) takes its place with verl's shape: a
driver that joins the cluster with the rendered runtime_env, a TaskRunner actor that saves a checkpoint each
step through Loka's real S3 callback, and a lingering child in the driver's process group. Everything else is
real: the trainer's runner and signal handling, Ray, MinIO and the API server with the per-run Role.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.procfs import stat_fields
from loka_api.dataset import build_dataset
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.tiny import write_tasks
from tests.trainer.conftest import REPO_ROOT, create_run, per_run_kubeconfig, read_run, wait_for

RUN_TIMEOUT_S = 240
MAX_STEPS = 12
EVERY = 4


@pytest.fixture(scope="module")
def ray_head(cluster: Any) -> Iterator[str]:
    """A one-node Ray cluster whose processes have the S3 credentials, as the RayJob's pods get them."""
    from ray.cluster_utils import Cluster

    # Ray records the newest head for `ray.init(address="auto")` on this machine; the demo stack's is put back.
    current = Path("/tmp/ray/ray_current_cluster")
    previous = current.read_bytes() if current.is_file() else None
    with pytest.MonkeyPatch.context() as env:
        for key, value in cluster.env.items():
            if key.startswith("AWS_"):
                env.setenv(key, value)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        head = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        yield str(head.address)
    finally:
        head.shutdown()  # type: ignore[no-untyped-call]
        if previous is not None:
            current.write_bytes(previous)


def alive(pid: int) -> bool:
    try:
        state = stat_fields(pid)[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def verl_spec(prefix: S3Uri) -> dict[str, Any]:
    base = f"s3://{prefix.bucket}/{prefix.key}"
    return {
        "engine": "verl",
        "image": "loka:rl-train",
        "model": {"uri": f"{base}/model"},
        "data": {"train": f"{base}/data/train.parquet"},
        "training": {"maxSteps": MAX_STEPS, "batchSize": 4, "samplesPerPrompt": 4},
        "resources": {"workers": 1, "gpusPerWorker": 1},
        "checkpoints": {"uri": f"{base}/ckpt", "every": EVERY, "keep": 3, "resume": "auto"},
    }


def start_trainer(env: dict[str, str], work_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.trainer.verl_standin", "trainer", "run", "--work-dir", str(work_dir)]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def standin_pids(work_dir: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in work_dir.rglob("pids/*") if p.read_text().strip()}


def trained_step(work_dir: Path) -> int:
    """The last step verl finished (its metrics file), 0 before the first."""
    import json

    lines = [line for f in work_dir.rglob("metrics.jsonl") for line in f.read_text().splitlines() if line.strip()]
    return max((int(json.loads(line)["step"]) for line in lines), default=0)


def test_sigterm_saves_the_step_in_flight_then_stops_verl_and_its_actor(  # noqa: PLR0917
    cluster: Any,
    k8s: Any,
    namespace: str,
    trainingrun_crd: None,
    s3_env: dict[str, str],
    object_store: ObjectStore,
    s3_prefix: S3Uri,
    ray_head: str,
    tmp_path: Path,
) -> None:
    build_dataset(write_tasks(tmp_path / "tasks.jsonl", 64), tmp_path / "data", validation_fraction=0.1)
    object_store.upload_files(
        [
            (tmp_path / "data" / "train.parquet", s3_prefix.join("data", "train.parquet")),
            (tmp_path / "data" / "train.parquet", s3_prefix.join("model", "config.json")),  # never read
        ]
    )
    uid = create_run(k8s, namespace, "verl-stop", verl_spec(s3_prefix))["metadata"]["uid"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "RAY_"))}
    env = {
        **base,
        **s3_env,
        "AWS_DEFAULT_REGION": "us-east-1",
        "KUBECONFIG": str(per_run_kubeconfig(cluster, k8s, namespace, "verl-stop", tmp_path)),
        "LOKA_RUN_NAME": "verl-stop",
        "LOKA_RUN_NAMESPACE": namespace,
        "RAY_ADDRESS": ray_head,  # what a RayJob's entrypoint finds
        "PYTHONUNBUFFERED": "1",
    }
    store = CheckpointStore(object_store, s3_prefix.join("ckpt", namespace, "verl-stop", uid), keep=3)
    log = tmp_path / "trainer.log"
    work = tmp_path / "attempt-1"

    trainer = start_trainer(env, work, log)
    try:
        # Past the first periodic checkpoint (step 4) by a step: a stop without a save would lose the steps since.
        wait_for(
            lambda: ((store.marker_step() or 0) >= EVERY and trained_step(work) > EVERY) or trainer.poll() is not None,
            timeout=RUN_TIMEOUT_S,
            what=f"checkpoint {EVERY} to be marked and step {EVERY + 1} trained",
            interval=0.1,
        )
        assert trainer.poll() is None, log.read_text(errors="replace")[-4000:]
        reached = trained_step(work)
        trainer.send_signal(signal.SIGTERM)  # what Ray's job stop sends on preemption, suspension or deletion
        code = trainer.wait(timeout=60)
        pids = standin_pids(work)
        left = {role: pid for role, pid in pids.items() if alive(pid)}
    finally:
        trainer.kill()
        for pid in standin_pids(work).values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert code == 143, output[-4000:]
    assert set(pids) == {"driver", "group-child", "actor"}
    assert left == {}, f"still running after the trainer exited: {left}"  # nothing can move the marker now
    stopped_at = store.marker_step()
    assert stopped_at is not None
    # The step in flight at the signal ended with a checkpoint (or the next, if the signal came at its very end).
    assert reached + 1 <= stopped_at <= reached + 2 < MAX_STEPS, (reached, stopped_at)
    assert store.latest_complete() == stopped_at
    status = read_run(k8s, namespace, "verl-stop")["status"]
    saved = f"saved step {stopped_at} before stopping"
    assert status["message"] == f"trainer stopped by SIGTERM; {saved}; resumes from checkpoint step {stopped_at}"
    assert "asked verl to save at the end of the step in flight" in output
    assert "stopping verl" in output

    second = start_trainer(env, tmp_path / "attempt-2", log)  # a new pod: empty local disk
    try:
        code = second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        second.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert f"resuming from checkpoint step {stopped_at}" in output
    status = read_run(k8s, namespace, "verl-stop")["status"]
    assert status["progress"]["step"] == MAX_STEPS
    assert status["checkpoint"]["step"] == MAX_STEPS
