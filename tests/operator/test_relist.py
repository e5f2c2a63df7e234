"""The operator's caches after a watch gap: what was deleted while the operator could not watch (runs, Evaluations,
children) is forgotten once its watches come back (kopf relists and reports only what exists; the operator must learn
the rest)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from localcluster.controlplane import PORTS, LocalCluster
from localcluster.faults import FaultProxy
from localcluster.operator_process import OperatorProcess
from loka_api import kinds
from loka_operator import naming
from tests.operator.conftest import eventually, fresh_namespace, metric, run_manifest, wait_phase
from tests.operator.kube import Kube

SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}


@dataclass
class CutOff:
    """An operator that reaches the API server only through `proxy`, watching only `ns`."""

    ns: str
    proxy: FaultProxy
    process: OperatorProcess


@pytest.fixture
def cut_off(cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path) -> Iterator[CutOff]:
    prefix = f"lokarl-{uuid.uuid4().hex[:4]}-"
    namespaces = fresh_namespace(kube, prefix)
    ns = next(namespaces)
    with FaultProxy(PORTS.apiserver) as proxy:
        kubeconfig = cluster.kubeconfig_for(f"loka-relist-{uuid.uuid4().hex[:4]}", server=proxy.server)
        # The operator's own resync (10 minutes) never comes during the test: what it shows follows from the relist.
        process = OperatorProcess(
            cluster,
            tmp_path / "loka-operator.log",
            namespace_prefix=prefix,
            resync_seconds=None,
            env={"KUBECONFIG": str(kubeconfig)},
        )
        process.start()
        try:
            yield CutOff(ns, proxy, process)
        finally:
            process.stop()
    next(namespaces, None)


REWARD_MODEL_RUN = {"algorithm": "rm", "engine": "trl", "data": {"fromEvaluation": "judged"}}


def evaluation_manifest(name: str, ns: str) -> dict[str, object]:
    evaluations = kinds.EVALUATION
    return {
        "apiVersion": evaluations.api_version,
        "kind": evaluations.kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "ghcr.io/acme/loka:rl-train",
            "rollouts": {"fromRun": "never-made", "steps": "latest"},
            "judges": [{"name": "one", "endpoint": "http://judge:8000/v1", "model": "m"}],
            "output": {"uri": "s3://loka/evals/judged"},
        },
    }


def network_policy_exists(kube: Kube, ns: str, run: str) -> bool:
    policies = client.NetworkingV1Api(kube.api).list_namespaced_network_policy(ns).items
    return naming.network_policy_name(run) in {p.metadata.name for p in policies if p.metadata is not None}


def owner_uid(body: dict[str, object] | None) -> str | None:
    if body is None:
        return None
    refs = body["metadata"]["ownerReferences"]  # type: ignore[index]
    return str(refs[0]["uid"])


def test_what_was_deleted_while_the_watch_was_away_is_forgotten_after_the_relist(
    cut_off: CutOff, cluster: LocalCluster, kube: Kube
) -> None:
    ns, operator = cut_off.ns, cut_off.process
    for name in ("recreated", "deleted", "kept"):
        kube.create_run(run_manifest(name, ns, resources=SMALL))
    # A run that starts from the checkpoint of one that will be deleted before it has one.
    kube.create_run(run_manifest("follower", ns, resources=SMALL, model={"fromRun": {"name": "deleted"}}))
    for name in ("recreated", "deleted", "kept"):
        eventually(lambda n=name: kube.rayjob(ns, n) and kube.phase(ns, n), timeout=60, what=f"{name} to launch")
    eventually(lambda: kube.status(ns, "follower").get("source", {}).get("uid"), what="the follower to wait")
    # An Evaluation (waiting for a run that never comes) and a reward model's run waiting for its pairs.
    evaluations = kinds.EVALUATION
    kube.custom.create_namespaced_custom_object(
        evaluations.group, evaluations.version, ns, evaluations.plural, evaluation_manifest("judged", ns)
    )
    kube.create_run(run_manifest("rewarded", ns, resources=SMALL, **REWARD_MODEL_RUN))
    eventually(lambda: kube.status(ns, "rewarded").get("trainData", {}).get("uid"), what="the rm run to wait")
    eventually(lambda: metric(operator, "loka_runs") == 5, what="five runs counted")
    eventually(lambda: metric(operator, "loka_evaluations") == 1, what="the Evaluation counted")

    # The operator hears nothing while two runs are deleted (their children collected) and a child of the third is
    # deleted by hand; then the watch history is compacted away, as after an outage longer than the watch window.
    cut_off.proxy.stall()
    try:
        kube.delete_run(ns, "recreated")
        kube.delete_run(ns, "deleted")
        kube.custom.delete_namespaced_custom_object(
            evaluations.group, evaluations.version, ns, evaluations.plural, "judged"
        )
        client.NetworkingV1Api(kube.api).delete_namespaced_network_policy(naming.network_policy_name("kept"), ns)
        for name in ("recreated", "deleted"):
            eventually(lambda n=name: kube.rayjob(ns, n) is None, timeout=90, what=f"{name}'s RayJob to be collected")
        cluster.expire_watches()
    finally:
        cut_off.proxy.pass_()

    # A new run of a deleted run's name starts, instead of waiting for the old run's children forever.
    new = kube.create_run(run_manifest("recreated", ns, resources=SMALL))
    eventually(
        lambda: owner_uid(kube.rayjob(ns, "recreated")) == new["metadata"]["uid"],
        timeout=60,
        what=f"the new run's RayJob (run condition now {kube.condition(ns, 'recreated', 'Launched')})",
    )
    # The child deleted by hand is back.
    eventually(lambda: network_policy_exists(kube, ns, "kept"), timeout=30, what="the NetworkPolicy recreated")
    # The run waiting for the deleted one's checkpoint learns that it will never come.
    failed = wait_phase(kube, ns, "follower", "Failed", timeout=30)
    assert "deleted" in failed["message"], failed
    # The run waiting for the deleted Evaluation's pairs learns that they will never come.
    failed = wait_phase(kube, ns, "rewarded", "Failed", timeout=30)
    assert "Evaluation 'judged' was deleted" in failed["message"], failed
    # The deleted run and the deleted Evaluation are no longer counted.
    eventually(lambda: metric(operator, "loka_runs") == 4, timeout=30, what="four runs counted")
    eventually(lambda: metric(operator, "loka_evaluations") == 0, timeout=30, what="no Evaluation counted")
