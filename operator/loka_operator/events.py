"""Kubernetes Events on a TrainingRun or an Evaluation: one per phase transition, as `kubectl describe` shows them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loka_api import kinds
from loka_operator import naming
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.status import PhaseEvent

log = logging.getLogger(__name__)

MAX_EVENT_MESSAGE = 1024


@dataclass
class EventRecorder:
    client: KubeClient
    instance: str = field(default_factory=socket.gethostname)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def post_soon(self, body: JSON, event: PhaseEvent) -> None:
        """Post in the background: a reconcile never waits for its Event (the status already says it)."""
        task = asyncio.get_running_loop().create_task(self.post(body, event), name=f"event {event.reason}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Let the Events still on their way arrive (shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), timeout=5)

    async def post(self, body: JSON, event: PhaseEvent) -> None:
        """Record ``event`` on the run; a failure is logged, never raised (the status already says it)."""
        meta = body["metadata"]
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        manifest: JSON = {
            "apiVersion": kinds.EVENT.api_version,
            "kind": kinds.EVENT.kind,
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", kinds.TRAINING_RUN.api_version),
                "kind": body.get("kind", kinds.TRAINING_RUN.kind),
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
            await self.client.create(kinds.EVENT, meta["namespace"], manifest)
        except ApiError as error:
            log.warning("could not post Event %s for %s/%s: %s", event.reason, meta["namespace"], meta["name"], error)
