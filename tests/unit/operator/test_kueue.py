"""Who may flip a Workload's spec.active: the operator undoes only its own deactivations."""

from __future__ import annotations

from typing import Any

from loka_operator.kueue import DEACTIVATED_BY_ANNOTATION, activation_patch, deactivated_elsewhere, workload_of


def workload(*, active: bool, ours: bool = False, uid: str = "rj-1", created: str = "2026-01-01T00:00:00Z") -> Any:
    annotations = {DEACTIVATED_BY_ANNOTATION: "loka-operator"} if ours else {}
    return {
        "metadata": {
            "name": f"rayjob-qwen-{uid}",
            "annotations": annotations,
            "labels": {"kueue.x-k8s.io/job-uid": uid},
            "creationTimestamp": created,
        },
        "spec": {"active": active},
    }


def test_suspending_deactivates_and_marks_the_workload() -> None:
    patch = activation_patch(workload(active=True), suspend=True)
    assert patch == {
        "metadata": {"annotations": {DEACTIVATED_BY_ANNOTATION: "loka-operator"}},
        "spec": {"active": False},
    }


def test_resuming_reactivates_only_a_workload_the_operator_deactivated() -> None:
    assert activation_patch(workload(active=False, ours=True), suspend=False) == {
        "metadata": {"annotations": {DEACTIVATED_BY_ANNOTATION: None}},
        "spec": {"active": True},
    }
    # Kueue (requeuing limit, maximum execution time) or an admin turned it off: not ours to undo.
    assert activation_patch(workload(active=False), suspend=False) is None
    assert deactivated_elsewhere(workload(active=False))
    assert not deactivated_elsewhere(workload(active=False, ours=True))


def test_nothing_to_do_when_the_workload_already_follows_the_run() -> None:
    assert activation_patch(workload(active=True), suspend=False) is None
    assert activation_patch(workload(active=False, ours=True), suspend=True) is None
    assert activation_patch(workload(active=False), suspend=True) is None


def test_the_newest_workload_of_the_rayjob_is_the_one() -> None:
    old = workload(active=True, created="2026-01-01T00:00:00Z")
    new = workload(active=True, created="2026-01-02T00:00:00Z")
    other = workload(active=True, uid="rj-2", created="2026-01-03T00:00:00Z")
    assert workload_of([old, other, new], {"metadata": {"uid": "rj-1"}}) is new
