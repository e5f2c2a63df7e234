"""Operator-wide settings, from the environment and the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from loka_operator.builders.rayjob import SUBMISSION_MODES, RayJobSettings

ENV_SUBMISSION_MODE = "LOKA_RAYJOB_SUBMISSION_MODE"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LeaderElection:
    """Which coordination.k8s.io Lease the replicas compete for, and its timing (controller-runtime's defaults)."""

    namespace: str
    name: str = "loka-operator"
    lease_seconds: float = 15.0  # a standby takes over this long after the leader last renewed
    renew_deadline_seconds: float = 10.0  # the leader gives up when it could not renew for this long
    retry_seconds: float = 2.0


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    rayjob: RayJobSettings = field(default_factory=RayJobSettings)
    resync_seconds: float = 600.0  # the slow pass over every run, from the watch-backed caches
    secret_retry_seconds: float = 5.0  # how soon a run waiting for a Secret looks again
    refused_retry_seconds: float = 15.0  # ... one whose child the API server refused (a quota may free up)
    previous_run_retry_seconds: float = 2.0  # ... one waiting for the children of an earlier run to be collected
    max_concurrent_reconciles: int = 16
    metrics_port: int = 9090
    # Server-side selector for Kueue Workloads (e.g. `loka.dev/run` when Kueue's labelKeysToCopy copies it).
    workload_selector: str = ""
    leader_election: LeaderElection | None = None
    # Slack post retries: the delays between tries (about five minutes in all).
    notification_backoff: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 120.0)

    @classmethod
    def from_env(cls, namespaces: tuple[str, ...] = (), **overrides: object) -> OperatorConfig:
        mode = os.environ.get(ENV_SUBMISSION_MODE, "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            raise ConfigError(
                f"{ENV_SUBMISSION_MODE}={mode!r} is not supported; use one of {', '.join(SUBMISSION_MODES)}"
            )
        return cls(namespaces=namespaces, rayjob=RayJobSettings(submission_mode=mode), **overrides)  # type: ignore[arg-type]
