"""The client library against the real local control plane (API server, KubeRay, Kueue, this session's operator):
what a notebook or the demo sees when it submits, follows, waits for, suspends and deletes a run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.operator_process import OperatorProcess
from loka_api import RunPhase
from loka_client import (
    CheckpointNotFoundError,
    Client,
    ClusterError,
    InvalidInputError,
    InvalidRunError,
    RunFailedError,
    RunNotFoundError,
    StorageError,
    WaitTimeoutError,
)
from tests.operator.conftest import drive_rayjob, run_manifest, wait_phase
from tests.operator.kube import Kube


@pytest.fixture
def client(cluster: LocalCluster, ns: str) -> Iterator[Client]:
    with Client(ns, kubeconfig=cluster.kubeconfig) as client:
        yield client


def end_when_running(kube: Kube, ns: str, name: str, job_status: str) -> threading.Thread:
    """Stand in for the Ray job's end once the run runs (as the operator tests drive it), in the background."""

    def drive() -> None:
        wait_phase(kube, ns, name, "Running")
        drive_rayjob(kube, ns, name, "Complete", job_status)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    return driver


def test_a_submitted_run_is_typed_and_watched_through_each_phase_to_its_end(
    operator: OperatorProcess, kube: Kube, ns: str, client: Client
) -> None:
    run = client.submit(run_manifest("watched", ns))
    assert run.name == "watched" and run.namespace == ns and run.metadata.uid
    assert run.spec.training.batch_size == 16
    end_when_running(kube, ns, "watched", "SUCCEEDED")
    changes = list(client.watch("watched", timeout=120))
    phases = [c.run.phase for c in changes if c.phase_changed]
    assert phases[-1] is RunPhase.SUCCEEDED
    assert RunPhase.RUNNING in phases
    assert all(c.changed for c in changes)  # a change says what changed; nothing is yielded twice
    final = client.wait("watched", timeout=10)  # already over: returns at once
    assert final.finished and final.status.completion_time is not None
    assert [r.name for r in client.list()] == ["watched"]


def test_waiting_for_a_run_that_fails_raises_with_its_message_and_where_to_look(
    operator: OperatorProcess, kube: Kube, ns: str, client: Client
) -> None:
    client.submit(run_manifest("doomed", ns))
    end_when_running(kube, ns, "doomed", "FAILED")
    with pytest.raises(RunFailedError) as caught:
        client.wait("doomed", timeout=120)
    assert caught.value.run.phase is RunPhase.FAILED
    assert f"TrainingRun {ns}/doomed failed" in str(caught.value)
    assert f"loka logs doomed -n {ns}" in str(caught.value)


def test_wait_until_a_phase_and_a_timeout_that_names_the_last_phase_seen(
    operator: OperatorProcess, ns: str, client: Client
) -> None:
    client.submit(run_manifest("slow", ns))
    assert client.wait("slow", until=["Running"], timeout=90).phase is RunPhase.RUNNING
    with pytest.raises(WaitTimeoutError, match=r"slow did not reach the end within 1s \(last seen: Running\)"):
        client.wait("slow", timeout=1)


def test_bad_input_is_refused_with_the_field_and_nothing_is_created(
    operator: OperatorProcess, ns: str, client: Client, tmp_path: Path
) -> None:
    manifest = run_manifest("bad", ns)
    manifest["spec"]["checkpoints"]["every"] = "often"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidRunError) as caught:
        client.submit(path)
    assert caught.value.field == "spec.checkpoints.every" and caught.value.value == "often"
    assert caught.value.message.startswith(f"{path}: spec.checkpoints.every")
    # The API server's own rules (CEL) refuse what the models let through, with its words.
    manifest = run_manifest("bad", ns)
    manifest["metadata"]["name"] = "x" * 60
    with pytest.raises(InvalidRunError):
        client.submit(manifest)
    assert client.list() == []


def test_suspend_resume_and_delete_and_a_missing_run_is_named(
    operator: OperatorProcess, ns: str, client: Client
) -> None:
    client.submit(run_manifest("pause-me", ns))
    client.wait("pause-me", until=["Running"], timeout=90)
    assert client.suspend("pause-me").spec.suspend is True
    assert client.wait("pause-me", until=["Suspended"], timeout=90).phase is RunPhase.SUSPENDED
    assert client.suspend("pause-me").spec.suspend is True  # already: left as it is
    assert client.resume("pause-me").spec.suspend is False
    client.wait("pause-me", until=["Running"], timeout=120)
    client.delete("pause-me")
    with pytest.raises(RunNotFoundError) as caught:
        client.get("pause-me")
    assert caught.value.name == "pause-me" and f"no TrainingRun 'pause-me' in namespace '{ns}'" in str(caught.value)
    with pytest.raises(RunNotFoundError):
        client.delete("pause-me")


def test_an_unreachable_api_server_is_a_cluster_error_naming_it(cluster: LocalCluster, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    with pytest.raises(ClusterError, match=r"cannot reach the API server at https://127.0.0.1:1"):
        Client("default", kubeconfig=unreachable).list()


def test_checkpoints_are_read_through_the_core_reader_and_downloads_are_verified(
    cluster: LocalCluster, kube: Kube, ns: str, tmp_path: Path
) -> None:
    from loka_api.manifest import Writer
    from loka_api.storage import ObjectStore
    from loka_trainer.checkpoints import CheckpointStore

    uri = f"s3://{S3_BUCKET}/client-ckpt-{ns}/"
    created = kube.create_run(run_manifest("saved", ns, checkpoints={"uri": uri, "every": 1, "keep": 3}))
    writer = CheckpointStore.for_run(ObjectStore(settings=cluster.env), uri, namespace=ns, run_name="saved",
                                     uid=created["metadata"]["uid"], keep=3, writer=Writer(1, "t"))  # fmt: skip
    writer.claim()
    folder = tmp_path / "step"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model.bin").write_bytes(b"w" * 5000)
    writer.upload(7, folder)  # as the trainer writes it

    client = Client(ns, kubeconfig=cluster.kubeconfig, s3_settings=cluster.env)
    [checkpoint] = client.checkpoints("saved")
    assert (checkpoint.step, checkpoint.files, checkpoint.bytes, checkpoint.latest) == (7, 1, 5000, True)
    got = client.download("saved", 7, tmp_path / "weights")
    assert got.path == tmp_path / "weights" / "global_step_7" and (got.files, got.bytes) == (1, 5000)
    assert (got.path / "actor" / "model.bin").read_bytes() == b"w" * 5000
    with pytest.raises(InvalidInputError, match="already exists"):
        client.download("saved", 7, tmp_path / "weights")
    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint at step 8") as caught:
        client.download("saved", 8, tmp_path / "w8")
    assert caught.value.hint == "complete steps: 7"

    unsaved = run_manifest("unsaved", ns)
    del unsaved["spec"]["checkpoints"]
    kube.create_run(unsaved)
    with pytest.raises(CheckpointNotFoundError, match=r"unsaved saves no checkpoints \(spec.checkpoints is not set\)"):
        client.checkpoints("unsaved")
    unreachable = Client(
        ns, kubeconfig=cluster.kubeconfig, s3_settings={**cluster.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    )
    with pytest.raises(StorageError, match=r"cannot reach S3 at http://127.0.0.1:1"):
        unreachable.checkpoints("saved")
