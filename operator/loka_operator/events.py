"""Kubernetes Events on a TrainingRun: one per phase transition, as `kubectl describe` shows them."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loka_operator import naming
from loka_operator.kube import EVENTS, JSON, ApiError, KubeClient
from loka_operator.status import PhaseEvent

log = logging.getLogger(__name__)

MAX_EVENT_MESSAGE = 1024


@dataclass
class EventRecorder:
    client: KubeClient
    instance: str = field(default_factory=socket.gethostname)

    async def post(self, body: JSON, event: PhaseEvent) -> None:
        """Record ``event`` on the run; a failure is logged, never raised (the status already says it)."""
        meta = body["metadata"]
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        manifest: JSON = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", "loka.dev/v1alpha1"),
                "kind": body.get("kind", "TrainingRun"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": event.reason,
            "message": event.message[:MAX_EVENT_MESSAGE],
            "type": event.type,
            "source": {"component": naming.OPERATOR_NAME},
            "reportingComponent": naming.OPERATOR_NAME,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.client.create(EVENTS, meta["namespace"], manifest)
        except ApiError as error:
            log.warning("could not post Event %s for %s/%s: %s", event.reason, meta["namespace"], meta["name"], error)
