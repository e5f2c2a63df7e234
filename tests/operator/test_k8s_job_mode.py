"""The default submission mode: KubeRay runs `ray job submit` from a submitter Job that Kueue also accounts for."""

from __future__ import annotations

from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import eventually, run_manifest
from tests.operator.kube import Kube


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
