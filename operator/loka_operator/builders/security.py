"""The security contexts of every pod the operator makes: Kubernetes' restricted Pod Security profile."""

from __future__ import annotations

from typing import Any


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security() -> dict[str, Any]:
    # No runAsUser: the image's non-root user (or OpenShift's assigned UID) is used.
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
