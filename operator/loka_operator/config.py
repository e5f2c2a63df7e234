"""Operator-wide settings, from the environment and the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from loka_operator.builders.rayjob import SUBMISSION_MODES, RayJobSettings

ENV_SUBMISSION_MODE = "LOKA_RAYJOB_SUBMISSION_MODE"


class ConfigError(ValueError):
    pass


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
        return cls(namespaces=namespaces, rayjob=RayJobSettings(submission_mode=mode), **overrides)  # type: ignore[arg-type]
