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
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    rayjob: RayJobSettings = field(default_factory=RayJobSettings)
    resync_seconds: float = 60.0  # the slow drift-repair pass over every run
    secret_retry_seconds: float = 5.0  # how soon a run waiting for a Secret looks again
    max_concurrent_reconciles: int = 16
    metrics_port: int = 9090
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
