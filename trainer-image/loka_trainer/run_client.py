"""The trainer's view of its own TrainingRun: who it is (env), how it reaches the API, read the spec, patch status.

The operator's per-run Role allows exactly ``get`` on this run and ``patch`` on its ``trainingruns/status``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from loka_api import GROUP, PLURAL, VERSION, TrainingRun
from loka_api.contract import ENV_RUN_NAME, ENV_RUN_NAMESPACE


class IdentityError(RuntimeError):
    """The trainer was started without knowing which TrainingRun it serves."""


@dataclass(frozen=True)
class RunIdentity:
    name: str
    namespace: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RunIdentity:
        env = os.environ if environ is None else environ
        missing = [var for var in (ENV_RUN_NAME, ENV_RUN_NAMESPACE) if not env.get(var)]
        if missing:
            msg = f"{' and '.join(missing)} must be set to the TrainingRun this trainer serves (the operator sets them)"
            raise IdentityError(msg)
        return cls(name=env[ENV_RUN_NAME], namespace=env[ENV_RUN_NAMESPACE])


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster service account when running in a pod, else ``kubeconfig`` or ``$KUBECONFIG``."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except ConfigException:
            pass
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
    )
    return client.ApiClient(configuration)


class RunClient:
    """Reads one TrainingRun and merge-patches its status subresource."""

    def __init__(self, api: client.ApiClient, identity: RunIdentity) -> None:
        self.identity = identity
        self._objects = client.CustomObjectsApi(api)

    def get(self) -> TrainingRun:
        body = self._objects.get_namespaced_custom_object(
            GROUP, VERSION, self.identity.namespace, PLURAL, self.identity.name
        )
        return TrainingRun.model_validate(body)

    def patch_status(self, status: dict[str, Any]) -> None:
        """JSON merge patch of ``status``: keys given replace, keys left out stay, ``None`` deletes."""
        self._objects.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.identity.namespace,
            PLURAL,
            self.identity.name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
