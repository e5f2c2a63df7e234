"""What a run's phase means, written once: which phases end a run, which mean an attempt is on a Ray cluster,
and how each looks to ArgoCD.

The operator decides the phase (``loka_operator.status``); everyone who reads one (the client library, the CLI,
the demo, the ArgoCD health check) interprets it through these names. The health check is Lua and cannot import
them: ``tests/deploy/test_argocd_health.py`` holds it to ``ARGOCD_HEALTH``.
"""

from __future__ import annotations

import enum

from loka_api.models import RunPhase, TrainingRun

# The run ended: nothing of it runs any more and its phase does not change again (for this generation).
TERMINAL = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED})
# An attempt holds (or is getting) a Ray cluster.
ACTIVE = frozenset({RunPhase.STARTING, RunPhase.RUNNING, RunPhase.RESUMING})
# Entering one of these from an active phase ends the current attempt (a suspension or preemption).
ATTEMPT_ENDING = frozenset({RunPhase.QUEUED, RunPhase.SUSPENDED})
# What a run shows before the operator has written any phase.
INITIAL = RunPhase.PENDING


class Health(enum.StrEnum):
    """ArgoCD's health statuses (argo-cd's ``health.HealthStatusCode``)."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


# How ArgoCD shows each phase. Queued reads as Suspended, like a suspended batch Job: waiting for Kueue is no fault.
ARGOCD_HEALTH: dict[RunPhase, Health] = {
    RunPhase.PENDING: Health.PROGRESSING,
    RunPhase.QUEUED: Health.SUSPENDED,
    RunPhase.STARTING: Health.PROGRESSING,
    RunPhase.RUNNING: Health.PROGRESSING,
    RunPhase.SUSPENDED: Health.SUSPENDED,
    RunPhase.RESUMING: Health.PROGRESSING,
    RunPhase.SUCCEEDED: Health.HEALTHY,
    RunPhase.FAILED: Health.DEGRADED,
}


def phase_of(run: TrainingRun) -> RunPhase:
    """The run's phase, ``Pending`` before the operator wrote one."""
    return run.status.phase or INITIAL


def is_terminal(phase: RunPhase | str | None) -> bool:
    return phase is not None and phase in TERMINAL


def finished(run: TrainingRun) -> bool:
    """The run ended for its current spec: a terminal phase that the operator wrote after seeing this generation
    (a run just resubmitted with a new spec still shows the old generation's end until the operator catches up).
    """
    return is_terminal(run.status.phase) and run.status.observed_generation == run.metadata.generation
