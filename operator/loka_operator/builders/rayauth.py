"""The run's Ray token: KubeRay turns on Ray's token authentication (`authOptions.mode: token`) with it.

KubeRay puts `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN` (by `secretKeyRef` to this Secret) into every Ray
container and the submitter, and sends the token itself when it submits and polls the job. Ray then refuses
dashboard, job API and GCS/raylet calls without it.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from loka_api import kinds
from loka_operator import naming

Manifest = dict[str, Any]

# The key KubeRay reads (RAY_AUTH_TOKEN_SECRET_KEY in ray-operator's utils/constant.go).
RAY_AUTH_TOKEN_KEY = "auth_token"
# KubeRay refuses `authOptions.mode: token` for a RayCluster whose rayVersion is older.
MIN_RAY_VERSION_FOR_TOKEN_AUTH = (2, 52, 0)


def new_ray_token() -> str:
    return secrets.token_urlsafe(32)


def build_ray_auth_secret(run: str, namespace: str, rayjob: str, rayjob_uid: str, token: str) -> Manifest:
    """Owned by the run's RayJob (which the run owns): KubeRay's RayJob finalizer reads the token to stop the job,
    so it must go after the RayJob, not beside it. Immutable: a token never changes under a running cluster."""
    return {
        "apiVersion": kinds.SECRET.api_version,
        "kind": kinds.SECRET.kind,
        "metadata": {
            "name": naming.ray_auth_secret_name(run),
            "namespace": namespace,
            "labels": naming.run_labels(run, "ray-token"),
            "ownerReferences": [naming.rayjob_owner_reference(rayjob, rayjob_uid)],
        },
        "type": "Opaque",
        "immutable": True,
        "data": {RAY_AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def auth_options(run: str) -> Manifest:
    return {"mode": "token", "secretName": naming.ray_auth_secret_name(run)}
