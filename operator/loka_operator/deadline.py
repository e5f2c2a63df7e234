"""spec.deadline: a wall-time limit for the whole run, across its attempts.

The clock starts at the run's first start (status.startTime, which only the operator writes) and counts every
attempt and the time between them. Two hands enforce it:

- KubeRay, within an attempt: the RayJob's ``activeDeadlineSeconds`` is per attempt (KubeRay restarts its clock,
  ``status.startTime``, each time a suspended or retried RayJob starts again), so the operator sets it to what is
  left of the run's deadline at that attempt's start. KubeRay then fails the RayJob at the run's deadline
  (reason DeadlineExceeded, never retried) and deletes the Ray cluster; the pods' preStop hook stops the trainer,
  which saves the step in flight first (the same handshake as on a preemption).
- The operator, between attempts (a run suspended or queued at its deadline has no attempt for KubeRay to time)
  and as a backstop when KubeRay has not acted shortly after the deadline: it deletes the RayJob (KubeRay's
  finalizer stops the Ray job gracefully, the pods' preStop hook waits for the save).

Kueue's maximum execution time counts only admitted time and deactivates rather than fails: not a wall-time limit.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from loka_api import TrainingRunSpec, TrainingRunStatus
from loka_operator.status import DEADLINE_EXCEEDED, Problem

# KubeRay reconciles a running RayJob every few seconds; past this after the deadline, the operator stops it itself.
KUBERAY_SLACK_S = 15.0
# jobDeploymentStatus values in which KubeRay checks activeDeadlineSeconds (rayjob_controller.go).
KUBERAY_TIMED = frozenset({"Initializing", "Running"})


def deadline_at(spec: TrainingRunSpec, status: TrainingRunStatus) -> datetime | None:
    """When the run's deadline passes; None without spec.deadline or before the run first started."""
    return None if spec.deadline is None else spec.deadline.ends(status.start_time)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def active_deadline_seconds(spec: TrainingRunSpec, status: TrainingRunStatus, rayjob: dict[str, Any] | None,
                            now: datetime) -> int | None:  # fmt: skip
    """The RayJob's activeDeadlineSeconds: what is left of the run's deadline when KubeRay's clock for this
    attempt started (its status.startTime; before it has one, from now, which only errs long). At least 1 (KubeRay
    refuses less): an attempt started after the deadline fails at once.
    """
    if spec.deadline is None:
        return None
    ends = deadline_at(spec, status)
    if ends is None:
        return spec.deadline.seconds  # not started yet: the first attempt gets the whole of it
    started = _parse_time(((rayjob or {}).get("status") or {}).get("startTime")) or now
    return max(1, math.ceil((ends - started).total_seconds()))


def exceeded(spec: TrainingRunSpec, status: TrainingRunStatus, now: datetime) -> Problem | None:
    """The run's deadline has passed: why it ends, in words that say when."""
    ends = deadline_at(spec, status)
    if ends is None or spec.deadline is None or now < ends:
        return None
    started = status.start_time.isoformat().replace("+00:00", "Z") if status.start_time else "?"
    return Problem(
        DEADLINE_EXCEEDED,
        f"the run passed its deadline (spec.deadline.seconds {spec.deadline.seconds} from its start at {started}): "
        "the attempt in flight was stopped after saving the step it was on; the run ends with its last checkpoint",
    )


def seconds_until(spec: TrainingRunSpec, status: TrainingRunStatus, now: datetime) -> float | None:
    """Seconds until the deadline (for a requeue), None when there is none or it passed."""
    ends = deadline_at(spec, status)
    if ends is None or now >= ends:
        return None
    return (ends - now).total_seconds()


def kuberay_timing(rayjob: dict[str, Any] | None) -> bool:
    """KubeRay times the RayJob's attempt now (it checks activeDeadlineSeconds only in these states)."""
    return ((rayjob or {}).get("status") or {}).get("jobDeploymentStatus") in KUBERAY_TIMED
