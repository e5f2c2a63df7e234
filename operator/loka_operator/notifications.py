"""Slack notifications: one post per phase transition a run asks for, recorded in its status before it is sent.

The reconcile step (`Notifier.step`) is cheap and never waits on Slack: it decides whether the run's current phase
is an event to post for this attempt, claims it with a conditional write of `status.notifications` (only one
operator replica can win the claim: the write carries the resourceVersion it read), and hands the post to a
background task. The task reads the webhook URL from the run's Secret, posts with the Slack SDK's webhook client,
retries with backoff, and records `Sent` or `Failed`. A claim whose sender died is taken over once it is older than
the whole retry budget. The URL is a secret: it is never logged, and errors are reported without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loka_api import (
    NotificationEvent,
    NotificationRecord,
    NotificationState,
    RunPhase,
    SecretKeyRef,
    TrainingRun,
    TrainingRunStatus,
    kinds,
)
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


def due(run: TrainingRun) -> tuple[NotificationEvent, int] | None:
    """The (event, attempt) the run's current phase asks to post, if the run subscribed to it."""
    slack = run.spec.notifications.slack if run.spec.notifications else None
    event = EVENT_OF_PHASE.get(run.status.phase) if run.status.phase else None
    if slack is None or event is None or event not in slack.events:
        return None
    return event, run.status.attempt or 0


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


@dataclass
class Notifier:
    client: KubeClient
    backoff: Sequence[float] = DEFAULT_BACKOFF
    timeout: float = 10.0
    sender: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def claim_expires_after(self) -> float:
        """A claim older than this lost its sender: every retry and timeout would be over by now."""
        return sum(self.backoff) + len(self.backoff) * self.timeout + 30

    def forget(self, key: str) -> None:
        for task_key in [k for k in self._tasks if k.startswith(f"{key}#")]:
            self._tasks.pop(task_key).cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---------------------------------------------------------------------------- the reconcile step

    async def step(self, body: JSON) -> None:
        """Claim and start the notification the run's phase asks for; return at once (never waits on Slack)."""
        run = TrainingRun.model_validate(body)
        wanted = due(run)
        if wanted is None:
            return
        event, attempt = wanted
        meta = run.metadata
        task_key = f"{naming.run_key(meta.namespace, meta.name)}#{event}#{attempt}"
        if task_key in self._tasks and not self._tasks[task_key].done():
            return
        record = next((r for r in run.status.notifications if (r.event, r.attempt) == (event, attempt)), None)
        if record is not None and record.state is not NotificationState.SENDING:
            return  # sent, or given up on
        tries = 0
        if record is not None:
            age = (_now() - record.time).total_seconds() if record.time else float("inf")
            if record.sender != self.sender and age < self.claim_expires_after:
                return  # another replica is sending it
            tries = record.tries
        claim = NotificationRecord(
            event=event, attempt=attempt, state=NotificationState.SENDING, tries=tries, sender=self.sender, time=_now()
        )
        if not await self._record(body, claim, conditional=True):
            return  # the run changed meanwhile (maybe another replica claimed it): the next reconcile decides
        assert run.spec.notifications is not None and run.spec.notifications.slack is not None
        task = asyncio.get_running_loop().create_task(
            self._deliver(meta.namespace, meta.name, run.spec.notifications.slack.webhook, message(run, event, attempt),
                          claim),
            name=f"notify {task_key}",
        )  # fmt: skip
        self._tasks[task_key] = task
        task.add_done_callback(lambda _: self._tasks.pop(task_key, None) if self._tasks.get(task_key) is task else None)

    async def _record(self, body: JSON, record: NotificationRecord, *, conditional: bool) -> bool:
        """Put ``record`` into the run's status.notifications; False when a conditional write lost a race."""
        meta = body["metadata"]
        records = [
            r
            for r in (body.get("status") or {}).get("notifications") or []
            if (r.get("event"), r.get("attempt")) != (record.event.value, record.attempt)
        ]
        records.append(record.model_dump(mode="json", by_alias=True, exclude_none=True))
        patch: JSON = {"status": {"notifications": records[-MAX_RECORDS:]}}
        if conditional:
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        try:
            await self.client.merge_patch(
                kinds.TRAINING_RUN, meta["namespace"], meta["name"], patch, subresource="status"
            )
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    # ----------------------------------------------------------------------------- in the background

    async def _deliver(
        self, namespace: str, name: str, webhook: SecretKeyRef, payload: JSON, claim: NotificationRecord
    ) -> None:
        url = ""
        outcome, detail, tries = NotificationState.FAILED, "", claim.tries
        try:
            url, detail = await self._webhook_url(namespace, webhook)
            if url:
                outcome, detail, tries = await self._post(url, payload, tries)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never let a notification take the operator down
            detail = _redact(f"{type(error).__name__}: {error}", url)
        log.log(
            logging.INFO if outcome is NotificationState.SENT else logging.WARNING,
            "notification %s (attempt %s) for %s/%s: %s after %d tries%s",
            claim.event, claim.attempt, namespace, name, outcome, tries, f" ({detail})" if detail else "",
        )  # fmt: skip
        final = claim.model_copy(update={"state": outcome, "tries": tries, "time": _now(), "message": detail or None})
        for _ in range(5):  # unconditional after a fresh read: only this sender holds the claim
            body = await self.client.get(kinds.TRAINING_RUN, namespace, name)
            if body is None:
                return
            with contextlib.suppress(ApiError):
                if await self._record(body, final, conditional=True):
                    return
            await asyncio.sleep(0.5)

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
