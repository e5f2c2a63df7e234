"""What a user reads when a run fails: the condition and the Event carry the cause, a failure the trainer knows is
permanent ends the run at once, and a retry is a Warning that says why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.conftest import eventually, run_manifest, wait_condition, wait_phase
from tests.operator.kube import Kube

SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}
KUBERAY_FAILED = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):"
MISSING = "trainer failed: s3://loka/data/gsm8k/missing.parquet does not exist"

pytestmark = pytest.mark.usefixtures("operator")


def running(kube: Kube, ns: str, name: str, **spec: Any) -> None:
    kube.create_run(run_manifest(name, ns, resources=SMALL, **spec))
    wait_phase(kube, ns, name, "Running", timeout=120)


def rayjob_says(kube: Kube, ns: str, name: str, **status: Any) -> None:
    """KubeRay's part, written as its own controller would (as the operator tests' drive_rayjob does)."""
    kube.custom.patch_namespaced_custom_object_status("ray.io", "v1", ns, "rayjobs", name, {"status": status})


def event(kube: Kube, ns: str, name: str, reason: str) -> Any:
    return eventually(
        lambda: next((e for e in kube.events(ns, name) if e.reason == reason), None),
        what=f"a {reason} Event on {name}",
    )


def test_a_failed_runs_condition_and_event_say_the_last_line_of_the_driver_log(kube: Kube, ns: str) -> None:
    running(kube, ns, "log-cause")
    log = f"{KUBERAY_FAILED}\n2026-12-07 INFO staging inputs\n{MISSING}\n\n---------------------------------------\n"
    rayjob_says(
        kube, ns, "log-cause", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=log
    )

    failed = wait_condition(kube, ns, "log-cause", "Failed", "True")
    assert failed["message"] == MISSING
    said = event(kube, ns, "log-cause", "Failed")
    assert (said.type, said.message) == ("Warning", MISSING)


def test_the_trainers_own_reason_wins_over_kuberays_line(kube: Kube, ns: str) -> None:
    running(kube, ns, "trainer-cause")
    reason = "trainer failed: the reward function acme.rewards:score does not import (No module named 'acme')"
    kube.patch_run_status(ns, "trainer-cause", {"message": reason})  # as the trainer does before it exits
    rayjob_says(
        kube, ns, "trainer-cause", jobDeploymentStatus="Failed", jobStatus="FAILED", message=f"{KUBERAY_FAILED}\n"
    )

    assert wait_condition(kube, ns, "trainer-cause", "Failed", "True")["message"] == reason
    assert event(kube, ns, "trainer-cause", "Failed").message == reason


def test_a_permanent_failure_ends_the_run_at_once_without_a_retry(kube: Kube, ns: str) -> None:
    running(kube, ns, "permanent", maxRestarts=3)
    failure = {"attempt": 1, "reason": "InputMissing", "permanent": True}
    kube.patch_run_status(ns, "permanent", {"message": MISSING, "failure": failure})

    status = wait_phase(kube, ns, "permanent", "Failed", timeout=30)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == ("InputMissing", MISSING)
    assert (status["attempt"], status.get("restarts", 0)) == (1, 0)
    # KubeRay gets no chance to start another Ray cluster for it.
    eventually(lambda: kube.rayjob(ns, "permanent") is None, timeout=30, what="the RayJob to be deleted")
    said = event(kube, ns, "permanent", "Failed")
    assert (said.type, said.message) == ("Warning", MISSING)


def test_a_retry_is_a_warning_that_says_why(kube: Kube, ns: str) -> None:
    running(kube, ns, "retried", maxRestarts=3)
    crash = "trainer failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    kube.patch_run_status(ns, "retried", {"message": crash})
    rayjob_says(kube, ns, "retried", jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1, message="")

    said = eventually(
        lambda: next((e for e in kube.events(ns, "retried") if e.type == "Warning"), None),
        what="a Warning Event about the retry",
    )
    assert said.message == f"attempt 1 failed and is retried on a new Ray cluster: {crash}"
    assert not [e for e in kube.events(ns, "retried") if e.type == "Normal" and e.reason == "Resuming"]
