"""Where a queued run stands in Kueue: its position, from Kueue's visibility API where the cluster serves it, else
estimated from the Workloads of the run's namespace (Kueue's own order: priority, then creation time)."""

from __future__ import annotations

import json
from typing import Any

from loka_cli.cluster import KUEUE_GROUP, KUEUE_VERSION, Cluster

JSON = dict[str, Any]
VISIBILITY_VERSIONS = ("v1beta2", "v1beta1")


def _admitted(workload: JSON) -> bool:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("QuotaReserved", "Admitted") and c.get("status") == "True" for c in conditions)


def _workload_of(workloads: list[JSON], rayjob_uid: str) -> JSON | None:
    mine = [w for w in workloads if (w["metadata"].get("labels") or {}).get("kueue.x-k8s.io/job-uid") == rayjob_uid]
    return max(mine, key=lambda w: w["metadata"].get("creationTimestamp", ""), default=None)


def _visibility_position(cluster: Cluster, local_queue: str, workload: str) -> int | None:
    from kubernetes.client.exceptions import ApiException

    for version in VISIBILITY_VERSIONS:
        path = (
            f"/apis/visibility.kueue.x-k8s.io/{version}/namespaces/{cluster.namespace}"
            f"/localqueues/{local_queue}/pendingworkloads"
        )
        try:
            method, url, headers, body, post = cluster.api.param_serialize(
                "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
            )
            response = cluster.api.call_api(method, url, headers, body, post, _request_timeout=10)
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


def queue_position(cluster: Cluster, run: JSON) -> str | None:
    """'position 2 of 3 in LocalQueue team-a: <Kueue's reason>' while the run is queued; None otherwise."""
    status, spec = run.get("status") or {}, run.get("spec") or {}
    if status.get("phase") != "Queued" or not spec.get("queue"):
        return None
    local_queue = spec["queue"]["name"]
    reason = next(
        (c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Admitted" and c.get("message")),
        status.get("message") or "",
    )
    rayjob = cluster.get_rayjob(status.get("rayJob") or run["metadata"]["name"])
    workloads = cluster.list_custom(KUEUE_GROUP, KUEUE_VERSION, "workloads")
    mine = _workload_of(workloads, rayjob["metadata"]["uid"]) if rayjob else None
    if mine is None:
        return f"waiting for Kueue to create the Workload (LocalQueue {local_queue})"
    position = _visibility_position(cluster, local_queue, mine["metadata"]["name"])
    pending = [
        w
        for w in workloads
        if w["spec"].get("queueName") == local_queue and not _admitted(w) and w["spec"].get("active", True)
    ]
    pending.sort(key=lambda w: (-(w["spec"].get("priority") or 0), w["metadata"].get("creationTimestamp", "")))
    names = [w["metadata"]["name"] for w in pending]
    estimated = ""
    if position is None and mine["metadata"]["name"] in names:
        position, estimated = names.index(mine["metadata"]["name"]) + 1, " (estimated from this namespace)"
    where = f"position {position} of {len(names)}" if position else f"{len(names)} pending"
    return f"{where} in LocalQueue {local_queue}{estimated}: {reason}".rstrip(": ")
