"""Pure functions from a TrainingRun to the manifests of its children; they never talk to the API server."""

from loka_operator.builders.localqueue import build_local_queue
from loka_operator.builders.rayjob import RayJobSettings, build_rayjob, referenced_secrets
from loka_operator.builders.rbac import build_role, build_role_binding, build_service_account

__all__ = [
    "RayJobSettings",
    "build_local_queue",
    "build_rayjob",
    "build_role",
    "build_role_binding",
    "build_service_account",
    "referenced_secrets",
]
