"""Kueue's Workload, read once: which Workload is a RayJob's, and whether Kueue admitted it.

The operator (why a run waits, its Admitted condition) and the client library (a queued run's position) both
read Workloads through these functions; neither tests Kueue's conditions itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

# Kueue labels each Workload with the uid of the job it admits.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
# Conditions Kueue sets on a Workload (kueue apis/kueue/v1beta2 workload_types.go).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
PREEMPTED = "Preempted"
EVICTED = "Evicted"

Workload = Mapping[str, Any]
W = TypeVar("W", bound=Workload)


def conditions(workload: Workload | None) -> dict[str, dict[str, Any]]:
    """The Workload's conditions by type (empty for no Workload)."""
    if not workload:
        return {}
    return {c.get("type", ""): c for c in (workload.get("status") or {}).get("conditions") or []}


def condition_true(workload: Workload | None, kind: str) -> bool:
    return conditions(workload).get(kind, {}).get("status") == "True"


def admitted(workload: Workload | None) -> bool:
    """Kueue admitted the Workload: its quota is reserved and every admission check passed."""
    return condition_true(workload, ADMITTED)


def pending(workload: Workload) -> bool:
    """The Workload waits in its queue: active, and holding no quota yet (neither reserved nor admitted)."""
    if (workload.get("spec") or {}).get("active", True) is False:
        return False
    return not (admitted(workload) or condition_true(workload, QUOTA_RESERVED))


def workload_of(workloads: Iterable[W], job: Mapping[str, Any]) -> W | None:
    """The newest Workload Kueue made for ``job`` (a RayJob), matched by the job's uid (label or owner)."""
    uid = (job.get("metadata") or {}).get("uid")
    if not uid:
        return None
    mine = [
        w
        for w in workloads
        if (w["metadata"].get("labels") or {}).get(JOB_UID_LABEL) == uid
        or any(ref.get("uid") == uid for ref in w["metadata"].get("ownerReferences") or [])
    ]
    return max(mine, key=lambda w: w["metadata"].get("creationTimestamp", ""), default=None)
