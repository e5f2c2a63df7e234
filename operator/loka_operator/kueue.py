"""The run's side of Kueue's Workload: which one is the RayJob's, and when the operator may flip `spec.active`.

Kueue re-admits a suspended RayJob it holds quota for, so suspending a queued run deactivates its Workload. Kueue
also deactivates Workloads itself (waitForPodsReady's requeuing limit, maximumExecutionTimeSeconds) and admins do
so to free quota: those are not the operator's to undo. The operator marks the Workloads it deactivates and only
ever reactivates a marked one; a foreign deactivation is reported in the run's status in Kueue's words.
"""

from __future__ import annotations

from typing import Any

from loka_api import GROUP
from loka_api.kueue import workload_of
from loka_operator import naming

__all__ = ["DEACTIVATED_BY_ANNOTATION", "activation_patch", "active", "deactivated_by_us", "workload_of"]

# Set on a Workload when the operator deactivated it for the run's spec.suspend; removed when it reactivates it.
DEACTIVATED_BY_ANNOTATION = f"{GROUP}/deactivated-by"


def active(workload: dict[str, Any]) -> bool:
    return bool((workload.get("spec") or {}).get("active", True))


def deactivated_by_us(workload: dict[str, Any]) -> bool:
    annotations = workload["metadata"].get("annotations") or {}
    return annotations.get(DEACTIVATED_BY_ANNOTATION) == naming.OPERATOR_NAME


def deactivated_elsewhere(workload: dict[str, Any] | None) -> bool:
    """Kueue or an admin turned the Workload off: the run waits until someone turns it on again."""
    return workload is not None and not active(workload) and not deactivated_by_us(workload)


def activation_patch(workload: dict[str, Any], suspend: bool) -> dict[str, Any] | None:
    """The merge patch that makes the Workload follow the run's spec.suspend, or None to leave it as it is."""
    if suspend and active(workload):
        return {
            "metadata": {"annotations": {DEACTIVATED_BY_ANNOTATION: naming.OPERATOR_NAME}},
            "spec": {"active": False},
        }
    if not suspend and not active(workload) and deactivated_by_us(workload):
        return {"metadata": {"annotations": {DEACTIVATED_BY_ANNOTATION: None}}, "spec": {"active": True}}
    return None
