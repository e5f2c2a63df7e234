"""Write a run's status: calculate it from what reconcile observed, patch the operator's fields only when they
changed, record the phase transition as an Event and in the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from loka_api import TrainingRunStatus, kinds
from loka_operator import naming
from loka_operator.cache import RunCache
from loka_operator.events import EventRecorder
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.status import Observed, StatusUpdate, calculate_status

log = logging.getLogger(__name__)


@dataclass
class StatusWriter:
    client: KubeClient
    cache: RunCache
    events: EventRecorder
    metrics: OperatorMetrics

    async def write(self, body: JSON, previous: TrainingRunStatus, observed: Observed) -> StatusUpdate | None:
        """The status the run now has; None when the run is gone (the caller forgets it)."""
        meta = body["metadata"]
        key = naming.run_key(meta["namespace"], meta["name"])
        update = calculate_status(observed, previous)
        self.metrics.observe_phase(key, update.status.phase)
        if update.left_queue_after is not None:
            self.metrics.queued_seconds.observe(update.left_queue_after)
        if not update.changes:
            return update
        try:
            written = await self.client.merge_patch(
                kinds.TRAINING_RUN, meta["namespace"], meta["name"], {"status": update.changes}, subresource="status"
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        self.cache.wrote(written)
        queue = ((body.get("spec") or {}).get("queue") or {}).get("name") or ""
        for record in update.interrupted:
            self.metrics.interruptions.labels(reason=record.reason, queue=queue).inc()
        for record in update.settled:
            self.metrics.steps_lost.labels(reason=record.reason, queue=queue).inc(record.steps_lost or 0)
            self.metrics.gpu_hours_lost.labels(reason=record.reason, queue=queue).inc(record.gpu_hours_lost or 0.0)
        if update.event is not None:
            self.events.post_soon(body, update.event)
        if update.status.phase != previous.phase:
            reason = update.event.reason if update.event else ""
            log.info("run %s: %s -> %s (%s)", key, previous.phase, update.status.phase, reason)
        return update
