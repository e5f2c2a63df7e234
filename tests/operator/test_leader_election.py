"""Two replicas: one leads through a coordination.k8s.io Lease, the other stands by and takes over when it dies."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import drive_rayjob, eventually, fresh_namespace, metric, run_manifest, wait_phase
from tests.operator.kube import Kube

SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}


@pytest.fixture
def replicas(cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path) -> Iterator[tuple[str, str, list[Any]]]:
    """Namespace, Lease name and two operator processes competing for that Lease (POD_NAME replica-a, -b)."""
    prefix = f"lokale-{uuid.uuid4().hex[:4]}-"
    namespaces = fresh_namespace(kube, prefix)
    ns = next(namespaces)
    lease = f"loka-{uuid.uuid4().hex[:6]}"
    election = ("--leader-elect", "--leader-elect-namespace", ns, "--leader-elect-lease", lease)
    processes = [
        OperatorProcess(
            cluster, tmp_path / f"{name}.log", namespace_prefix=prefix, extra_args=election, env={"POD_NAME": name}
        )
        for name in ("replica-a", "replica-b")
    ]
    try:
        for process in processes:
            process.start()  # healthy while standing by, too
        yield ns, lease, processes
    finally:
        for process in processes:
            process.stop()
        next(namespaces, None)


def holder(kube: Kube, ns: str, lease: str) -> str:
    from kubernetes import client

    leases: Any = client.CoordinationV1Api(kube.api)
    try:
        found = leases.read_namespaced_lease(lease, ns)
    except client.exceptions.ApiException:
        return ""
    return str(found.spec.holder_identity or "")


def test_one_replica_leads_and_a_killed_leader_hands_over_without_duplicates(
    replicas: tuple[str, str, list[Any]], kube: Kube
) -> None:
    ns, lease, (replica_a, replica_b) = replicas
    leading = eventually(lambda: holder(kube, ns, lease), what="a replica to take the Lease")
    leader, standby = (replica_a, replica_b) if leading.startswith("replica-a_") else (replica_b, replica_a)

    names = [f"run-{i}" for i in range(3)]
    for name in names:
        kube.create_run(run_manifest(name, ns, resources=SMALL))
    before = {name: wait_phase(kube, ns, name, "Running", timeout=120) for name in names}
    assert metric(leader, "loka_leader") == 1
    assert metric(standby, "loka_leader") == 0
    assert metric(standby, "loka_reconcile_total") == 0  # the standby watches nothing and writes nothing

    killed = time.monotonic()
    leader.kill()
    # While nobody leads: a new run arrives and a running one finishes.
    kube.create_run(run_manifest("run-late", ns, resources=SMALL))
    drive_rayjob(kube, ns, "run-0", "Complete", "SUCCEEDED")

    standby_name = "replica-a_" if standby is replica_a else "replica-b_"
    eventually(lambda: holder(kube, ns, lease).startswith(standby_name), timeout=30, what="the standby to lead")
    print(f"handover: the standby held the Lease {time.monotonic() - killed:.1f}s after the leader was killed")

    wait_phase(kube, ns, "run-0", "Succeeded")
    wait_phase(kube, ns, "run-late", "Running", timeout=120)
    for name in names[1:]:
        status = kube.status(ns, name)
        assert status["phase"] == "Running"
        assert (status["attempt"], status["startTime"]) == (1, before[name]["startTime"])  # nothing lost or redone
    rayjobs = sorted(r["metadata"]["name"] for r in kube.rayjobs(ns))
    assert rayjobs == sorted([*names, "run-late"])
    clusters = kube.list("ray.io", "v1", "rayclusters", ns)
    owners = [ref["name"] for c in clusters for ref in c["metadata"]["ownerReferences"]]
    assert len(owners) == len(set(owners))  # one Ray cluster per RayJob at most
    accounts = [sa.metadata.name for sa in kube.core.list_namespaced_service_account(ns).items]
    assert sorted(a for a in accounts if a.startswith("loka-run-")) == sorted(f"loka-run-{n}" for n in rayjobs)
    assert metric(standby, "loka_leader") == 1
