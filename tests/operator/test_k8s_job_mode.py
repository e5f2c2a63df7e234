"""The default submission mode: KubeRay runs `ray job submit` from a submitter Job that Kueue also accounts for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import NAMESPACE_PREFIX, eventually, fresh_namespace, run_manifest
from tests.operator.kube import Kube

# Not matched by the session operator's `<prefix>*`: this module's operator has these namespaces to itself.
PREFIX = NAMESPACE_PREFIX.rstrip("-") + "k-"


@pytest.fixture(scope="module")
def k8s_job_operator(
    cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator-k8sjob") / "loka-operator.log"
    process = OperatorProcess(cluster, log_path, submission_mode="K8sJobMode", namespace_prefix=PREFIX)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def k8s_ns(kube: Kube) -> Iterator[str]:
    yield from fresh_namespace(kube, PREFIX)


def test_queued_run_with_a_submitter_job_is_admitted_and_runs(
    k8s_job_operator: OperatorProcess, kube: Kube, k8s_ns: str, gpu_queue: str
) -> None:
    ns = k8s_ns
    kube.create_run(run_manifest("qwen", ns, queue={"name": "team-a", "clusterQueue": gpu_queue}))
    eventually(lambda: kube.phase(ns, "qwen") == "Running", timeout=90, what="phase Running")

    rayjob = kube.rayjob(ns, "qwen") or {}
    assert rayjob["spec"]["submissionMode"] == "K8sJobMode"
    workload = kube.workloads(ns)[0]
    assert {p["name"] for p in workload["spec"]["podSets"]} == {"head", "workers", "submitter"}

    batch = kube.batch.list_namespaced_job(ns).items
    assert [job.metadata.name for job in batch] == ["qwen"]
    pod = batch[0].spec.template.spec
    container = pod.containers[0]
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.security_context.run_as_user is None
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert "ray job submit" in " ".join(container.command + (container.args or []))
