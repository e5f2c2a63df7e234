"""What each interruption of a run cost: recorded when an attempt ends early, settled when the next one runs.

An interruption opens when an active attempt ends without finishing (Kueue preempted, evicted or deactivated the
Workload, a user suspended the run) or KubeRay retries it after a failure. It records the step the attempt had
reported. It is settled once the next attempt's trainer reports the checkpoint it restored
(``status.progress.attempt`` and ``resumedFrom``): the steps trained again, the GPU-hours they took (at the run's
measured seconds per step), and how long the run stood still. The totals sum every settled interruption.

The figures come from trainer-written status: they are accounting, never the ground for a decision.
"""

from __future__ import annotations

from datetime import datetime

from loka_api import Interruption, InterruptionTotals, TrainingRunStatus
from loka_api.phases import ACTIVE, ATTEMPT_ENDING
from loka_operator.messages import brief

MAX_INTERRUPTIONS = 16
RETRYING = "Retrying"


def gpu_hours(steps: int, seconds_per_step: float | None, gpus: int) -> float | None:
    if seconds_per_step is None:
        return None
    return round(steps * seconds_per_step * gpus / 3600, 4)


def account(
    previous: TrainingRunStatus, status: TrainingRunStatus, *, reason: str, message: str, now: datetime, gpus: int
) -> None:
    """Open an interruption when the attempt just ended early, settle the open one once the next runs."""
    records = list(status.interruptions)
    ended = previous.phase in ACTIVE and status.phase in ATTEMPT_ENDING
    retried = (status.restarts or 0) > (previous.restarts or 0)
    if ended or retried:
        step = previous.progress.step if previous.progress is not None else None
        records.append(
            Interruption(
                attempt=max(previous.attempt or 1, 1),
                time=now,
                reason=reason if ended else RETRYING,
                message=brief(message) if message else None,
                step_reached=step,
            )
        )
    if records and records[-1].running_again_after_seconds is None:
        records[-1] = _settled(records[-1], status, now=now, gpus=gpus)
    status.interruptions = records[-MAX_INTERRUPTIONS:]
    if status.interruptions != previous.interruptions or (ended or retried):
        status.interruption_totals = _totals(previous, status)


def _settled(record: Interruption, status: TrainingRunStatus, *, now: datetime, gpus: int) -> Interruption:
    """The record with its cost once a later attempt runs and its trainer said where it resumed from."""
    progress = status.progress
    if status.phase not in ACTIVE or progress is None or progress.resumed_from is None:
        return record
    if progress.attempt is None or progress.attempt <= record.attempt:
        return record  # still the interrupted attempt's words
    resumed = progress.resumed_from
    reached = max(record.step_reached or 0, resumed)  # the restored checkpoint proves the step was reached
    lost = reached - resumed
    seconds = status.metrics.seconds_per_step if status.metrics is not None else None
    return record.model_copy(
        update={
            "step_reached": reached,
            "resumed_from": resumed,
            "steps_lost": lost,
            "gpu_hours_lost": gpu_hours(lost, seconds, gpus),
            "running_again_after_seconds": round(max((now - record.time).total_seconds(), 0.0), 1),
        }
    )


def opened_and_settled(
    previous: TrainingRunStatus, status: TrainingRunStatus
) -> tuple[list[Interruption], list[Interruption]]:
    """The interruptions ``status`` opened, and those it settled, since ``previous``."""
    before = {(r.attempt, r.time): r for r in previous.interruptions}
    opened = [r for r in status.interruptions if (r.attempt, r.time) not in before]
    settled = [
        r
        for r in status.interruptions
        if r.running_again_after_seconds is not None
        and (before.get((r.attempt, r.time)) is None or before[(r.attempt, r.time)].running_again_after_seconds is None)
    ]
    return opened, settled


def _totals(previous: TrainingRunStatus, status: TrainingRunStatus) -> InterruptionTotals:
    """The previous totals plus what changed: new interruptions counted, newly settled ones summed."""
    totals = (previous.interruption_totals or InterruptionTotals()).model_copy()
    opened, settled = opened_and_settled(previous, status)
    totals.count += len(opened)
    for record in settled:
        if record.running_again_after_seconds is not None:
            totals.steps_lost += record.steps_lost or 0
            totals.gpu_hours_lost = round(totals.gpu_hours_lost + (record.gpu_hours_lost or 0.0), 4)
            totals.seconds_stopped = round(totals.seconds_stopped + record.running_again_after_seconds, 1)
    return totals
