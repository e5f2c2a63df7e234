"""Write a run's status: calculate it from what reconcile observed, patch the operator's fields only when they
changed, record the phase transition as an Event, in the metrics and as the notices it owes.

Each write is conditional on the resourceVersion of the body it was calculated from. A write calculated from a view
that something newer overtook (a trainer patch, a notice's record, a watch that showed an older version after our
own write) fails instead of landing; the run is read again and the status calculated again from what it now is.
So a transition is written, posted as an Event, observed in the metrics and owes its notices exactly once.

A change in words only (messages, conditions' reasons, the names KubeRay gave the attempt's cluster and job) is not
written at once: on the way to Running they change several times in a few seconds, each write costs the API server
what Kueue and KubeRay need to move the run on, and nobody acts on them. They go with the next write that matters
(a phase, a condition's status, a notice owed...), or on their own once they have held for `settle_seconds`: a
run that waits keeps saying why, at most half a minute late. (With 10 s, 100 runs applied at once on two cores
still had two writes of words each on the way: the steps there were 15-25 s apart.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from loka_api import TrainingRun, TrainingRunStatus, kinds
from loka_operator import naming, notifications
from loka_operator.cache import RunCache
from loka_operator.events import EventRecorder
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.status import Observed, StatusUpdate, calculate_status, only_words, status_changes

log = logging.getLogger(__name__)

# KubeRay's jobStatus values once the Ray job was running (PENDING: submitted, not started).
RAN = frozenset({"RUNNING", "SUCCEEDED", "FAILED", "STOPPED"})
# Lost races in a row before the reconcile gives up (and is retried with backoff like any failed reconcile).
MAX_CONFLICTS = 5
# How long a change in words only may wait for a write that matters before it is written on its own.
SETTLE_SECONDS = 30.0


@dataclass
class StatusWriter:
    client: KubeClient
    cache: RunCache
    events: EventRecorder
    metrics: OperatorMetrics
    settle_seconds: float = SETTLE_SECONDS
    # Since when each run's status has differed from the calculation in words only (not written yet).
    _words_since: dict[str, datetime] = field(default_factory=dict)

    def forget(self, key: str) -> None:
        self._words_since.pop(key, None)

    async def write(self, body: JSON, previous: TrainingRunStatus, observed: Observed) -> StatusUpdate | None:
        """The status the run now has (`write_in` set when words wait to be written); None when the run is gone
        (the caller forgets it)."""
        meta = body["metadata"]
        key = naming.run_key(meta["namespace"], meta["name"])
        for _ in range(MAX_CONFLICTS):
            update = self._calculate(body, previous, observed)
            if not update.changes:
                self._words_since.pop(key, None)
            if not update.changes or self._words_wait(key, previous, update, observed.now):
                self.metrics.observe_phase(key, update.status.phase)
                return update
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": update.changes}
            try:
                written = await self.client.merge_patch(
                    kinds.TRAINING_RUN, meta["namespace"], meta["name"], patch, subresource="status"
                )
            except ApiError as error:
                if error.status == 404:
                    return None
                if error.status != 409:
                    raise
                fresh = await self.client.get(kinds.TRAINING_RUN, meta["namespace"], meta["name"])
                if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
                    return None
                body, meta = fresh, fresh["metadata"]
                previous = TrainingRunStatus.model_validate(fresh.get("status") or {})
                continue
            self.cache.wrote(written)
            self._words_since.pop(key, None)
            self._landed(key, body, previous, update)
            return update
        raise ApiError(409, "Conflict", f"status of {key}: {MAX_CONFLICTS} writes in a row lost the race")

    def _words_wait(self, key: str, previous: TrainingRunStatus, update: StatusUpdate, now: datetime) -> bool:
        """The update changes words only and they have not held for `settle_seconds` yet: it is not written now
        (`update.write_in` says when it would be)."""
        if update.event is not None or not only_words(previous, update.status):
            return False
        since = self._words_since.setdefault(key, now)
        left = self.settle_seconds - (now - since).total_seconds()
        if left <= 0:
            return False
        update.write_in = left
        return True

    def _calculate(self, body: JSON, previous: TrainingRunStatus, observed: Observed) -> StatusUpdate:
        """The next status, with the notices its transition owes recorded in it."""
        update = calculate_status(observed, previous)
        try:
            events = notifications.subscribed(TrainingRun.model_validate(body).spec)
        except ValidationError:
            events = frozenset()
        job = ((observed.rayjob or {}).get("status") or {}).get("jobStatus")
        ran = job in RAN or previous.failure is not None
        due = notifications.owed(previous, update.status, events, ran=ran, now=observed.now)
        if due:
            update.status.notifications = notifications.bounded([*update.status.notifications, *due])
            update.changes = status_changes(previous, update.status)
        return update

    def _landed(self, key: str, body: JSON, previous: TrainingRunStatus, update: StatusUpdate) -> None:
        """What a transition does once its write landed (and only then): metrics, the Event, the log line."""
        self.metrics.observe_phase(key, update.status.phase)
        if update.left_queue_after is not None:
            self.metrics.queued_seconds.observe(update.left_queue_after)
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
