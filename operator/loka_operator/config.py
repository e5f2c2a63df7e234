"""Operator-wide settings, from the environment and the command line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from loka_operator.builders.networkpolicy import KUBERAY_DEFAULT_NAMESPACE
from loka_operator.builders.rayauth import MIN_RAY_VERSION_FOR_TOKEN_AUTH
from loka_operator.builders.rayjob import DEFAULT_RAY_VERSION, SUBMISSION_MODES, RayJobSettings

ENV_SUBMISSION_MODE = "LOKA_RAYJOB_SUBMISSION_MODE"
ENV_RAY_VERSION = "LOKA_RAY_VERSION"
ENV_KUBERAY_NAMESPACE = "LOKA_KUBERAY_NAMESPACE"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    rayjob: RayJobSettings = field(default_factory=RayJobSettings)
    # Each run's NetworkPolicy lets the KubeRay operator in this namespace reach the Ray dashboard.
    kuberay_namespace: str = KUBERAY_DEFAULT_NAMESPACE
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
        rayjob = RayJobSettings(submission_mode=mode, ray_version=ray_version)
        return cls(namespaces=namespaces, rayjob=rayjob, kuberay_namespace=kuberay_namespace, **overrides)  # type: ignore[arg-type]
