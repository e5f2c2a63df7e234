"""Pure functions from a TrainingRun to the manifests of its children; they never talk to the API server."""

from loka_operator.builders.localqueue import build_local_queue
from loka_operator.builders.networkpolicy import build_network_policy
from loka_operator.builders.rayauth import build_ray_auth_secret, new_ray_token
from loka_operator.builders.rayjob import RayJobSettings, build_rayjob
from loka_operator.builders.rbac import build_role, build_role_binding, build_service_account

__all__ = [
    "RayJobSettings",
    "build_local_queue",
    "build_network_policy",
    "build_ray_auth_secret",
    "build_rayjob",
    "build_role",
    "build_role_binding",
    "build_service_account",
    "new_ray_token",
]
