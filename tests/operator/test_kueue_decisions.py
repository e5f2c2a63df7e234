"""Kueue's own decisions stand: a Workload deactivated outside Loka stays off, and the run says why."""

from __future__ import annotations

from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import eventually, queued, run_manifest, wait_condition, wait_phase
from tests.operator.kube import Kube

RUN = "qwen"
KUEUE = ("kueue.x-k8s.io", "v1beta2")


def set_active(kube: Kube, ns: str, workload: str, active: bool) -> None:
    kube.custom.patch_namespaced_custom_object(*KUEUE, ns, "workloads", workload, {"spec": {"active": active}})


def test_a_workload_deactivated_outside_loka_stays_off_and_the_run_says_why(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str
) -> None:
    kube.create_run(run_manifest(RUN, ns, **queued(gpu_queue)))
    wait_phase(kube, ns, RUN, "Running")
    (workload,) = kube.workloads(ns)
    name = workload["metadata"]["name"]

    # An admin frees the quota (Kueue's requeuing limit and maximum execution time deactivate the same way).
    set_active(kube, ns, name, False)
    suspended = wait_condition(kube, ns, RUN, "Suspended", "True", reason="Deactivated")
    assert "The workload is deactivated" in suspended["message"]  # Kueue's own words
    assert f"patch workload {name}" in suspended["message"]  # and how to run it again
    assert kube.phase(ns, RUN) == "Suspended"

    # A full reconcile later (the spec changed) the operator still has not turned it back on.
    kube.patch_run(ns, RUN, {"maxRestarts": 5})
    generation = (kube.run(ns, RUN) or {})["metadata"]["generation"]
    eventually(
        lambda: kube.status(ns, RUN).get("observedGeneration") == generation,
        what="the operator to reconcile the new generation",
    )
    assert kube.workloads(ns)[0]["spec"]["active"] is False
    assert kube.phase(ns, RUN) == "Suspended"

    # Whoever deactivated it turns it on again: the run resumes as a new attempt.
    set_active(kube, ns, name, True)
    status = wait_phase(kube, ns, RUN, "Running", timeout=120)
    assert status["attempt"] == 2
