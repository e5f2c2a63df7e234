"""Operator-wide settings, from the environment and the command line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from loka_api.models import QUANTITY_PATTERN
from loka_operator.builders.rayjob import SUBMISSION_MODES, RayJobSettings

ENV_SUBMISSION_MODE = "LOKA_RAYJOB_SUBMISSION_MODE"
# Defaults of the Ray pods' work volumes for runs that do not size them (chart: operator.workDisk).
ENV_HEAD_DISK = "LOKA_HEAD_DISK"
ENV_WORKER_DISK = "LOKA_WORKER_DISK"
ENV_DISK_STORAGE_CLASS = "LOKA_DISK_STORAGE_CLASS"


class ConfigError(ValueError):
    pass


def _quantity(variable: str, default: str) -> str:
    value = os.environ.get(variable) or default
    if not re.fullmatch(QUANTITY_PATTERN, value) or value.startswith("-"):
        raise ConfigError(f"{variable}={value!r} is not a size; use a Kubernetes quantity such as 200Gi or 1Ti")
    return value


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
        defaults = RayJobSettings()
        rayjob = RayJobSettings(
            submission_mode=mode,
            head_disk=_quantity(ENV_HEAD_DISK, defaults.head_disk),
            worker_disk=_quantity(ENV_WORKER_DISK, defaults.worker_disk),
            disk_storage_class=os.environ.get(ENV_DISK_STORAGE_CLASS) or None,
        )
        return cls(namespaces=namespaces, rayjob=rayjob, **overrides)  # type: ignore[arg-type]
