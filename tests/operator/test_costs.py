"""What the operator costs the API server grows with Loka's runs and what they do, not with time or the cluster:
counted by the API server's audit log (who read which Secret, when)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.faults import AuditEvent
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import drive_rayjob, eventually, fresh_namespace, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "costly"
S3 = {"endpoint": "http://127.0.0.1:9000", "credentialsSecret": "s3"}
SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}

OperatorIn = Callable[[float | None], tuple[str, OperatorProcess]]


@pytest.fixture
def operator_in(cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path) -> Iterator[OperatorIn]:
    """An operator of its own with the given resync interval (None: its default, 10 minutes), watching one fresh
    namespace: (the namespace, the operator)."""
    started: list[tuple[Iterator[str], OperatorProcess]] = []

    def start(resync_seconds: float | None) -> tuple[str, OperatorProcess]:
        prefix = f"lokacost-{uuid.uuid4().hex[:4]}-"
        namespaces = fresh_namespace(kube, prefix)
        ns = next(namespaces)
        process = OperatorProcess(
            cluster, tmp_path / f"{prefix}operator.log", namespace_prefix=prefix, resync_seconds=resync_seconds
        )
        started.append((namespaces, process))
        process.start()
        return ns, process

    yield start
    for namespaces, process in started:
        process.stop()
        next(namespaces, None)


def secret_reads(cluster: LocalCluster, ns: str, name: str, since: datetime | None = None) -> list[AuditEvent]:
    """Every GET of the Secret (its metadata or its values) the API server answered."""
    return [
        e
        for e in cluster.audit_log.events(writes_only=False)
        if (e.verb, e.resource, e.namespace, e.name) == ("get", "secrets", ns, name)
        and (since is None or e.received > since)
    ]


def test_a_run_waiting_for_a_secret_looks_less_and_less_often(
    operator_in: OperatorIn, cluster: LocalCluster, kube: Kube
) -> None:
    ns, _ = operator_in(None)
    kube.create_run(run_manifest(RUN, ns, storage=S3, resources=SMALL))
    first = eventually(lambda: secret_reads(cluster, ns, "s3"), what="the first look for the Secret")[0]
    time.sleep(25)  # the window the looks are counted over, not a wait for state
    looks = [e for e in secret_reads(cluster, ns, "s3") if (e.received - first.received).total_seconds() <= 25]
    # Every 5 s it would be 6 looks; backing off (5 s, 10 s, 20 s, ...) it is 3, and an event on the run (the
    # operator's own status write, its echo arriving late on a loaded machine) may bring one look more.
    assert len(looks) <= 4, [str(e) for e in looks]
    assert kube.phase(ns, RUN) == "Pending"


def test_the_resync_reads_no_secret_values_of_a_finished_run(
    operator_in: OperatorIn, cluster: LocalCluster, kube: Kube
) -> None:
    ns, _ = operator_in(2)
    data = {k: base64.b64encode(b"minio").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "data": data})
    kube.create_run(run_manifest(RUN, ns, storage=S3, resources=SMALL))
    eventually(lambda: kube.rayjob(ns, RUN), timeout=60, what="the RayJob")
    # KubeRay's message may quote a driver log: the operator redacts the run's Secret values from it.
    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED", message="done\nthe end")
    wait_phase(kube, ns, RUN, "Succeeded")
    eventually(
        lambda: secret_reads(cluster, ns, "s3") and kube.condition(ns, RUN, "Succeeded").get("status") == "True",
        what="the status written",
    )
    finished = datetime.now().astimezone()
    time.sleep(8)  # four resync passes of 2 s, not a wait for state
    assert secret_reads(cluster, ns, "s3", since=finished) == []
