"""The per-run identity of the trainer: it may read its own TrainingRun and patch that run's status, nothing else."""

from __future__ import annotations

from typing import Any

from loka_api import kinds
from loka_operator import naming
from loka_operator.children import ROLE, ROLE_BINDING, SERVICE_ACCOUNT

Manifest = dict[str, Any]


def build_service_account(run: str, namespace: str, uid: str) -> Manifest:
    return {
        **SERVICE_ACCOUNT.manifest(naming.service_account_name(run), run=run, namespace=namespace, uid=uid),
        # Its token goes only where the RayJob projects it (the head's trainer container), never pod-wide.
        "automountServiceAccountToken": False,
    }


def build_role(run: str, namespace: str, uid: str) -> Manifest:
    runs = kinds.TRAINING_RUN
    return {
        **ROLE.manifest(naming.role_name(run), run=run, namespace=namespace, uid=uid),
        "rules": [
            {"apiGroups": [runs.group], "resources": [runs.plural], "resourceNames": [run], "verbs": ["get"]},
            {
                "apiGroups": [runs.group],
                "resources": [f"{runs.plural}/status"],
                "resourceNames": [run],
                "verbs": ["patch"],
            },
        ],
    }


def build_role_binding(run: str, namespace: str, uid: str) -> Manifest:
    return {
        **ROLE_BINDING.manifest(naming.role_binding_name(run), run=run, namespace=namespace, uid=uid),
        "roleRef": {"apiGroup": kinds.ROLE.group, "kind": kinds.ROLE.kind, "name": naming.role_name(run)},
        "subjects": [
            {"kind": kinds.SERVICE_ACCOUNT.kind, "name": naming.service_account_name(run), "namespace": namespace}
        ],
    }
