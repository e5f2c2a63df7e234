"""The Kueue LocalQueue a run submits to, when the run names the ClusterQueue behind it."""

from __future__ import annotations

from typing import Any

from loka_api import QueueSpec, kinds
from loka_operator import naming


def build_local_queue(queue: QueueSpec, namespace: str) -> dict[str, Any] | None:
    """None when the run does not ask for one (the LocalQueue is then the cluster admin's business)."""
    if queue.cluster_queue is None:
        return None
    # Shared by every run in the namespace that names it, so no single run owns it.
    return {
        "apiVersion": kinds.LOCAL_QUEUE.api_version,
        "kind": kinds.LOCAL_QUEUE.kind,
        "metadata": {
            "name": queue.name,
            "namespace": namespace,
            "labels": {naming.LABEL_MANAGED_BY: naming.OPERATOR_NAME, naming.LABEL_PART_OF: "loka"},
        },
        "spec": {"clusterQueue": queue.cluster_queue},
    }
