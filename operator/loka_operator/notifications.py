"""Slack notifications: one post per phase transition a run asks for, recorded in its status before it is sent.

Exactly once per (run, event, attempt), short phases included:
- The notices a transition owes are written into `status.notifications` (state `Sending`, no sender yet) by the
  same conditional status write that records the new phase (`owed`, called by the status writer). A phase that
  lasted less than a reconcile is still a transition the status went through; a run the operator last saw
  starting and now sees finished, whose Ray job ran, owes its `Started` too.
- The reconcile step (`Notifier.step`) never waits on Slack: it starts one background sender per owed notice. The
  sender claims it (sets itself as sender, a write conditional on the resourceVersion it read, retried at once
  after a conflict from a fresh read), posts with the Slack SDK's webhook client, retries the post with backoff,
  and records `Sent` or `Failed`, again retried on every conflict until it lands: a trainer status patch can delay
  a notice by a read and a write, never until the next resync, and a record that failed to land is never posted
  again.
- A claim whose sender died is taken over once it is older than the whole retry budget.

What Slack guarantees limits what Loka can: an incoming webhook takes no idempotency key. A post Slack accepted
(2xx) is never repeated unless the operator stops between Slack's answer and the `Sent` record (one status write);
a post whose answer never came (a timeout, a reset connection) is retried and may show twice.
The URL is a secret: it is never logged, and errors are reported without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import random
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loka_api import (
    NotificationEvent,
    NotificationRecord,
    NotificationState,
    RunPhase,
    SecretKeyRef,
    TrainingRun,
    TrainingRunSpec,
    TrainingRunStatus,
    kinds,
)
from loka_api.phases import TERMINAL
from loka_operator import naming
from loka_operator.kube import JSON, ApiError, KubeClient

log = logging.getLogger(__name__)

EVENT_OF_PHASE = {
    RunPhase.RUNNING: NotificationEvent.STARTED,
    RunPhase.SUCCEEDED: NotificationEvent.SUCCEEDED,
    RunPhase.FAILED: NotificationEvent.FAILED,
    RunPhase.SUSPENDED: NotificationEvent.SUSPENDED,
}
MAX_RECORDS = 32
DEFAULT_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 120.0)
ICON = {
    NotificationEvent.STARTED: ":arrow_forward:",
    NotificationEvent.SUCCEEDED: ":white_check_mark:",
    NotificationEvent.FAILED: ":x:",
    NotificationEvent.SUSPENDED: ":double_vertical_bar:",
}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def subscribed(spec: TrainingRunSpec) -> frozenset[NotificationEvent]:
    """The events the run asked to hear about (none without Slack)."""
    slack = spec.notifications.slack if spec.notifications else None
    return frozenset(slack.events) if slack is not None else frozenset()


def owed(
    previous: TrainingRunStatus,
    current: TrainingRunStatus,
    events: frozenset[NotificationEvent],
    *,
    ran: bool,
    now: datetime,
) -> list[NotificationRecord]:
    """The notices the transition from ``previous`` to ``current`` owes, to be recorded with the new phase.

    ``ran``: the attempt's Ray job ran (KubeRay saw it running or ended); a run seen starting and then finished
    started, even though its Running was shorter than a reconcile.
    """
    if not events or (current.phase, current.attempt) == (previous.phase, previous.attempt) or current.phase is None:
        return []
    wanted: list[NotificationEvent] = []
    if current.phase in TERMINAL and ran and previous.phase != RunPhase.RUNNING:
        wanted.append(NotificationEvent.STARTED)
    if (event := EVENT_OF_PHASE.get(current.phase)) is not None:
        wanted.append(event)
    attempt = current.attempt or 0
    recorded = {(r.event, r.attempt) for r in current.notifications}
    return [
        NotificationRecord(event=event, attempt=attempt, state=NotificationState.SENDING, time=now)
        for event in wanted
        if event in events and (event, attempt) not in recorded
    ]


def bounded(records: list[NotificationRecord]) -> list[NotificationRecord]:
    """At most MAX_RECORDS, the oldest settled ones dropped first (a notice still owed is never dropped)."""
    extra = len(records) - MAX_RECORDS
    if extra <= 0:
        return records
    settled = [i for i, r in enumerate(records) if r.state is not NotificationState.SENDING][:extra]
    return [r for i, r in enumerate(records) if i not in settled]


def interruption_facts(status: TrainingRunStatus, event: NotificationEvent) -> str | None:
    """On a suspension, the interruption in Kueue's words and the step reached; on the start of a later attempt,
    what the last one cost once settled; with either, the run's totals so far.
    """
    last = status.interruptions[-1] if status.interruptions else None
    if last is None or event not in (NotificationEvent.SUSPENDED, NotificationEvent.STARTED):
        return None
    if event is NotificationEvent.STARTED and last.resumed_from is None:
        return None
    text = f"interrupted ({last.reason}) at step {last.step_reached if last.step_reached is not None else '?'}"
    if last.resumed_from is not None:
        hours = f", {last.gpu_hours_lost:.2f} GPU-hours" if last.gpu_hours_lost is not None else ""
        text += f", resumed from step {last.resumed_from}: {last.steps_lost} steps lost{hours}"
    totals = status.interruption_totals
    if totals is not None and totals.count:
        text += (
            f" · in all {totals.count} interruption{'s' if totals.count != 1 else ''}, "
            f"{totals.steps_lost} steps and {totals.gpu_hours_lost:.2f} GPU-hours lost"
        )
    return text


def message(run: TrainingRun, event: NotificationEvent, attempt: int) -> JSON:
    """The Slack payload: the run, what happened, step, reward, checkpoint and links."""
    meta, status = run.metadata, run.status
    verb = {"Started": "started", "Succeeded": "succeeded", "Failed": "failed", "Suspended": "was suspended"}[event]
    lines = [f"{ICON[event]} *{meta.namespace}/{meta.name}* {verb}" + (f" (attempt {attempt})" if attempt else "")]
    facts = []
    if status.progress and status.progress.step is not None:
        total = f"/{status.progress.total_steps}" if status.progress.total_steps else ""
        facts.append(f"step {status.progress.step}{total}")
    if status.metrics and status.metrics.reward_mean is not None:
        facts.append(f"reward {status.metrics.reward_mean:.3f}")
    if status.checkpoint and status.checkpoint.step is not None:
        facts.append(f"checkpoint step {status.checkpoint.step} `{status.checkpoint.uri}`")
    if facts:
        lines.append(" · ".join(facts))
    if (cost := interruption_facts(status, event)) is not None:
        lines.append(cost)
    if status.message and event in (NotificationEvent.FAILED, NotificationEvent.SUSPENDED):
        lines.append(f"> {status.message[:500]}")
    links = []
    if status.dashboard_url and event is NotificationEvent.STARTED:
        links.append(f"<{status.dashboard_url}|Ray dashboard>")
    if status.wandb_url:
        links.append(f"<{status.wandb_url}|W&B>")
    if links:
        lines.append(" · ".join(links))
    text = "\n".join(lines)
    payload: JSON = {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
    slack = run.spec.notifications.slack if run.spec.notifications else None
    if slack is not None and slack.channel:
        payload["channel"] = slack.channel
    return payload


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "<webhook URL>") if secret else text


# Pauses between tries of a conditional write that lost a race (a trainer patch, another notice's record).
CONFLICT_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _GoneError(Exception):
    """The run was deleted, or replaced by another of the same name: nothing more to send or record for it."""


@dataclass(frozen=True)
class _RunRef:
    """A run by name and uid: a new run of the same name is another run, owed nothing of this one's."""

    namespace: str
    name: str
    uid: str


# Picks the record to change out of a run's records: its index and what it becomes (None: nothing to change).
Change = Callable[[list[NotificationRecord]], tuple[int, NotificationRecord] | None]


@dataclass
class Notifier:
    client: KubeClient
    backoff: Sequence[float] = DEFAULT_BACKOFF
    timeout: float = 10.0
    sender: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    conflict_backoff: Sequence[float] = CONFLICT_BACKOFF
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # one sender per run, by run key
    _again: set[str] = field(default_factory=set)  # runs whose status owed more while their sender ran

    @property
    def claim_expires_after(self) -> float:
        """A claim older than this lost its sender: every retry and timeout would be over by now."""
        return sum(self.backoff) + len(self.backoff) * self.timeout + 30

    def forget(self, key: str) -> None:
        self._again.discard(key)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---------------------------------------------------------------------------- the reconcile step

    def step(self, body: JSON) -> float | None:
        """Start the run's sender when its status owes a notice; return at once (never waits on Slack), with the
        seconds after which a claim held by a sender that may have died can be taken over (None: nothing to wait
        for)."""
        run = TrainingRun.model_validate(body)
        if run.spec.notifications is None or run.spec.notifications.slack is None:
            return None
        owed_now = [r for r in run.status.notifications if r.state is NotificationState.SENDING]
        held = [left for r in owed_now if (left := self._held_for(r)) > 0]
        if len(held) < len(owed_now):
            meta = run.metadata
            key = naming.run_key(meta.namespace, meta.name)
            running = self._tasks.get(key)
            if running is not None and not running.done():
                self._again.add(key)  # it reads the run again before it stops
            else:
                task = asyncio.get_running_loop().create_task(
                    self._send_owed(key, _RunRef(meta.namespace, meta.name, meta.uid)), name=f"notify {key}"
                )
                self._tasks[key] = task
                task.add_done_callback(self._drop(key))
        return min(held) if held else None

    def _drop(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def drop(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        return drop

    def _held_for(self, record: NotificationRecord) -> float:
        """Seconds another sender's claim on ``record`` still holds (0: unclaimed, ours, or expired)."""
        if record.sender is None or record.sender == self.sender:
            return 0.0
        age = (_now() - record.time).total_seconds() if record.time else float("inf")
        return max(self.claim_expires_after - age, 0.0)

    # ----------------------------------------------------------------------------- in the background

    async def _send_owed(self, key: str, run: _RunRef) -> None:
        """Send what the run owes, one notice after the other in the order the transitions happened."""
        try:
            while True:
                self._again.discard(key)
                if not await self._send_next(run) and key not in self._again:
                    return
        except _GoneError:
            return

    async def _send_next(self, run: _RunRef) -> bool:
        """Claim the oldest notice nobody else holds, post it, record how it went; False when none is owed."""

        def claim(records: list[NotificationRecord]) -> tuple[int, NotificationRecord] | None:
            for index, record in enumerate(records):
                if record.state is NotificationState.SENDING and self._held_for(record) == 0:
                    return index, record.model_copy(update={"sender": self.sender, "time": _now()})
            return None

        claimed = await self._update(run, claim)
        if claimed is None:
            return False
        record, body = claimed
        event, attempt = record.event, record.attempt
        spec = TrainingRun.model_validate(body)
        assert spec.spec.notifications is not None and spec.spec.notifications.slack is not None
        outcome, detail, tries = await self._deliver(
            run.namespace, spec.spec.notifications.slack.webhook, message(spec, event, attempt), record.tries
        )
        log.log(
            logging.INFO if outcome is NotificationState.SENT else logging.WARNING,
            "notification %s (attempt %s) for %s/%s: %s after %d tries%s",
            event, attempt, run.namespace, run.name, outcome, tries, f" ({detail})" if detail else "",
        )  # fmt: skip
        final = record.model_copy(update={"state": outcome, "tries": tries, "time": _now(), "message": detail or None})

        def settle(records: list[NotificationRecord]) -> tuple[int, NotificationRecord] | None:
            for index, current in enumerate(records):
                if (current.event, current.attempt) == (event, attempt) and current.sender == self.sender:
                    return index, final
            return None  # taken over meanwhile: the one who took it records it

        await self._update(run, settle)
        return True

    async def _update(self, run: _RunRef, change: Change) -> tuple[NotificationRecord, JSON] | None:
        """Apply ``change`` to the run's records with a write conditional on what was read; read again and retry
        after every conflict until it lands. None when ``change`` finds nothing to change."""
        for tries in itertools.count():
            try:
                body = await self.client.get(kinds.TRAINING_RUN, run.namespace, run.name)
                if body is None or body["metadata"].get("uid") != run.uid:
                    raise _GoneError
                records = [
                    NotificationRecord.model_validate(r) for r in (body.get("status") or {}).get("notifications") or []
                ]
                picked = change(records)
                if picked is None:
                    return None
                index, changed = picked
                records[index] = changed
                patch: JSON = {
                    "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
                    "status": {
                        "notifications": [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in records]
                    },
                }
                written = await self.client.merge_patch(
                    kinds.TRAINING_RUN, run.namespace, run.name, patch, subresource="status"
                )
                return changed, written
            except ApiError as error:
                if error.status == 404:
                    raise _GoneError from error
                if error.status != 409:  # 409: a trainer patch or a phase write landed first; read again
                    log.warning("could not record a notification of %s/%s: %s", run.namespace, run.name, error)
            except (_GoneError, asyncio.CancelledError):
                raise
            except Exception as error:  # a timeout, a reset connection: the record must still land, so try again
                log.warning("could not record a notification of %s/%s: %s", run.namespace, run.name, error)
            pause = self.conflict_backoff[min(tries, len(self.conflict_backoff) - 1)]
            await asyncio.sleep(pause * (1 - 0.5 * random.random()))  # spreads retries; not a secret
        return None  # unreachable: itertools.count never ends

    async def _deliver(self, namespace: str, webhook: SecretKeyRef, payload: JSON, tries: int) -> tuple[
        NotificationState, str, int
    ]:  # fmt: skip
        url = ""
        try:
            url, detail = await self._webhook_url(namespace, webhook)
            if not url:
                return NotificationState.FAILED, detail, tries
            return await self._post(url, payload, tries)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never let a notification take the operator down
            return NotificationState.FAILED, _redact(f"{type(error).__name__}: {error}", url), tries

    async def _webhook_url(self, namespace: str, ref: SecretKeyRef) -> tuple[str, str]:
        secret = await self.client.get(kinds.SECRET, namespace, ref.secret)
        encoded = ((secret or {}).get("data") or {}).get(ref.key)
        if not encoded:
            return "", f"Secret {ref.secret!r} has no key {ref.key!r}"
        return base64.b64decode(encoded).decode().strip(), ""

    async def _post(self, url: str, payload: JSON, tries: int) -> tuple[NotificationState, str, int]:
        from slack_sdk.webhook.async_client import AsyncWebhookClient

        client = AsyncWebhookClient(url, timeout=int(self.timeout))
        detail = ""
        for planned in (*self.backoff, None):
            delay = planned
            tries += 1
            try:
                response = await client.send_dict(payload)
            except Exception as error:  # connection refused, timeout, TLS: worth a retry
                detail = _redact(f"{type(error).__name__}: {error}", url)
            else:
                if 200 <= response.status_code < 300:
                    return NotificationState.SENT, "", tries
                detail = f"Slack answered {response.status_code}: {_redact(str(response.body), url)[:200]}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    return NotificationState.FAILED, detail, tries  # a bad payload or a revoked webhook: final
                retry_after = (response.headers or {}).get("retry-after") or (response.headers or {}).get("Retry-After")
                if response.status_code == 429 and retry_after and delay is not None:
                    with contextlib.suppress(ValueError, TypeError):
                        delay = max(delay, float(retry_after[0] if isinstance(retry_after, list) else retry_after))
            if delay is None:
                break
            await asyncio.sleep(delay)
        return NotificationState.FAILED, detail, tries
