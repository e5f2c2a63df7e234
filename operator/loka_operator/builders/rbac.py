"""The per-run identity of the trainer: it may read its own TrainingRun and patch that run's status, nothing else."""

from __future__ import annotations

from typing import Any

from loka_api import GROUP, PLURAL
from loka_operator import naming

Manifest = dict[str, Any]


def _metadata(name: str, run: str, namespace: str, uid: str) -> Manifest:
    return {
        "name": name,
        "namespace": namespace,
        "labels": naming.run_labels(run, "trainer-identity"),
        "ownerReferences": [naming.owner_reference(run, uid)],
    }


def build_service_account(run: str, namespace: str, uid: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(naming.service_account_name(run), run, namespace, uid),
        # Its token goes only where the RayJob projects it (the head's trainer container), never pod-wide.
        "automountServiceAccountToken": False,
    }


def build_role(run: str, namespace: str, uid: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(naming.role_name(run), run, namespace, uid),
        "rules": [
            {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [run], "verbs": ["get"]},
            {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "resourceNames": [run], "verbs": ["patch"]},
        ],
    }


def build_role_binding(run: str, namespace: str, uid: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(naming.role_binding_name(run), run, namespace, uid),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": naming.role_name(run)},
        "subjects": [{"kind": "ServiceAccount", "name": naming.service_account_name(run), "namespace": namespace}],
    }
