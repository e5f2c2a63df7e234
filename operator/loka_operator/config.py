"""Operator-wide settings, from the environment and the command line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from loka_api.models import QUANTITY_PATTERN
from loka_operator.builders.networkpolicy import KUBERAY_DEFAULT_NAMESPACE
from loka_operator.builders.rayauth import MIN_RAY_VERSION_FOR_TOKEN_AUTH
from loka_operator.builders.rayjob import DEFAULT_RAY_VERSION, SUBMISSION_MODES, RayJobSettings
from loka_operator.naming import LABEL_RUN

ENV_SUBMISSION_MODE = "LOKA_RAYJOB_SUBMISSION_MODE"
ENV_RAY_VERSION = "LOKA_RAY_VERSION"
ENV_KUBERAY_NAMESPACE = "LOKA_KUBERAY_NAMESPACE"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
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

    def check(self) -> None:
        """The deadline must end the lead before a standby may take over, and leave room for a retry or two."""
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ConfigError(
                f"leader election: retry period {self.retry_seconds:g}s < renew deadline "
                f"{self.renew_deadline_seconds:g}s < lease duration {self.lease_seconds:g}s is required "
                "(--leader-elect-retry-period, --leader-elect-renew-deadline, --leader-elect-lease-duration)"
            )


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    rayjob: RayJobSettings = field(default_factory=RayJobSettings)
    # Each run's NetworkPolicy lets the KubeRay operator in this namespace reach the Ray dashboard.
    kuberay_namespace: str = KUBERAY_DEFAULT_NAMESPACE
    resync_seconds: float = 600.0  # the slow pass over every run, from the watch-backed caches
    secret_retry_seconds: float = 5.0  # how soon a run waiting for a Secret looks again, the first time
    secret_retry_max_seconds: float = 60.0  # ... doubling each time, up to this
    refused_retry_seconds: float = 15.0  # ... one whose child the API server refused (a quota may free up)
    previous_run_retry_seconds: float = 2.0  # ... one waiting for the children of an earlier run to be collected
    max_concurrent_reconciles: int = 16
    metrics_port: int = 9090
    # Server-side selector for Kueue Workloads: the run label, which Kueue copies from the RayJob when its
    # Configuration lists it in integrations.labelKeysToCopy ("": every Workload in scope, the others ignored).
    workload_selector: str = LABEL_RUN
    # A queued run whose RayJob Kueue holds but whose Workload does not show this long says why that may be.
    workload_grace_seconds: float = 60.0
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
        ray_version = os.environ.get(ENV_RAY_VERSION) or DEFAULT_RAY_VERSION
        parsed = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", ray_version)
        if parsed is None or tuple(int(part) for part in parsed.groups()) < MIN_RAY_VERSION_FOR_TOKEN_AUTH:
            oldest = ".".join(map(str, MIN_RAY_VERSION_FOR_TOKEN_AUTH))
            raise ConfigError(
                f"{ENV_RAY_VERSION}={ray_version!r}: expected the trainer image's Ray version as X.Y.Z, "
                f"{oldest} or newer (KubeRay needs it for Ray's token authentication)"
            )
        kuberay_namespace = os.environ.get(ENV_KUBERAY_NAMESPACE) or KUBERAY_DEFAULT_NAMESPACE
        if not DNS_LABEL.match(kuberay_namespace):
            raise ConfigError(f"{ENV_KUBERAY_NAMESPACE}={kuberay_namespace!r} is not a namespace name")
        defaults = RayJobSettings()
        rayjob = RayJobSettings(
            submission_mode=mode,
            ray_version=ray_version,
            head_disk=_quantity(ENV_HEAD_DISK, defaults.head_disk),
            worker_disk=_quantity(ENV_WORKER_DISK, defaults.worker_disk),
            disk_storage_class=os.environ.get(ENV_DISK_STORAGE_CLASS) or None,
        )
        return cls(namespaces=namespaces, rayjob=rayjob, kuberay_namespace=kuberay_namespace, **overrides)  # type: ignore[arg-type]
