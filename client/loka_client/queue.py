"""Where a queued run stands in Kueue: its position, from Kueue's visibility API where the cluster serves it, else
estimated from the Workloads of the run's namespace (Kueue's own order: priority, then creation time)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loka_api import ConditionType, RunPhase, kinds
from loka_api import kueue as workloads

if TYPE_CHECKING:
    from loka_client.client import Client
    from loka_client.runs import Run

JSON = dict[str, Any]
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
VISIBILITY_VERSIONS = ("v1beta2", "v1beta1")


@dataclass(frozen=True)
class QueueStanding:
    """A queued run in its LocalQueue: ``position`` of ``pending`` (None: not known), and Kueue's reason."""

    local_queue: str
    reason: str
    position: int | None = None
    pending: int | None = None
    estimated: bool = False  # the position is counted from this namespace's Workloads, not Kueue's
    has_workload: bool = True

    def __str__(self) -> str:
        if not self.has_workload:
            return f"waiting for Kueue to create the Workload (LocalQueue {self.local_queue})"
        where = f"position {self.position} of {self.pending}" if self.position else f"{self.pending} pending"
        estimated = " (estimated from this namespace)" if self.estimated else ""
        return f"{where} in LocalQueue {self.local_queue}{estimated}: {self.reason}".rstrip(": ")


def queue_standing(client: Client, run: Run) -> QueueStanding | None:
    """Where ``run`` stands while it is Queued; None otherwise."""
    if run.status.phase != RunPhase.QUEUED or run.spec.queue is None:
        return None
    local_queue = run.spec.queue.name
    reason = next(
        (c.message for c in run.status.conditions if c.type == ConditionType.ADMITTED.value and c.message),
        run.status.message or "",
    )
    rayjob = client.get_child(kinds.RAY_JOB, run.status.ray_job or run.name, run.namespace)
    found = client.list_children(kinds.WORKLOAD, run.namespace)
    mine = workloads.workload_of(found, rayjob) if rayjob else None
    if mine is None:
        return QueueStanding(local_queue, reason, has_workload=False)
    position = _visibility_position(client, run.namespace, local_queue, mine["metadata"]["name"])
    pending = [w for w in found if w["spec"].get("queueName") == local_queue and workloads.pending(w)]
    pending.sort(key=lambda w: (-(w["spec"].get("priority") or 0), w["metadata"].get("creationTimestamp", "")))
    names = [w["metadata"]["name"] for w in pending]
    estimated = False
    if position is None and mine["metadata"]["name"] in names:
        position, estimated = names.index(mine["metadata"]["name"]) + 1, True
    return QueueStanding(local_queue, reason, position, len(names), estimated)


def _visibility_position(client: Client, namespace: str, local_queue: str, workload: str) -> int | None:
    from kubernetes.client.exceptions import ApiException

    api = client.api
    for version in VISIBILITY_VERSIONS:
        path = f"/apis/{VISIBILITY_GROUP}/{version}/namespaces/{namespace}/localqueues/{local_queue}/pendingworkloads"
        try:
            method, url, headers, body, post = api.param_serialize(
                "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
            )
            response = api.call_api(method, url, headers, body, post, _request_timeout=10)
            response.read()
            if response.status != 200:
                continue  # not served here (no visibility API, or not allowed): estimate instead
            answer = json.loads(response.data)
        except (ApiException, OSError, ValueError):
            continue
        for item in (answer or {}).get("items", []):
            if item.get("metadata", {}).get("name") == workload:
                position = item.get("positionInLocalQueue")
                return int(position) + 1 if position is not None else None
        return None
    return None
