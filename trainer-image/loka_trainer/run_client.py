"""The trainer's view of its own TrainingRun: who it is (env), how it reaches the API, read the spec, patch status.

The operator's per-run Role allows exactly ``get`` on this run and ``patch`` on its ``trainingruns/status``.
Its token is short-lived (a projected volume, 10 minutes): the file is read again before every call, as the
kubelet replaces it long before it expires. A kubeconfig's ``tokenFile`` (the local demo's) is read the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from loka_api import GROUP, PLURAL, VERSION, TrainingRun
from loka_api.contract import ENV_RUN_NAME, ENV_RUN_NAMESPACE, SERVICE_ACCOUNT_DIR

# Set by the kubelet in every container: where the API server is from inside the cluster.
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"


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


def api_client(kubeconfig: str | None = None, *, service_account_dir: Path | None = None) -> client.ApiClient:
    """The projected ServiceAccount token when running in a pod, else ``kubeconfig`` or ``$KUBECONFIG``."""
    folder = Path(service_account_dir or SERVICE_ACCOUNT_DIR)
    host, port = os.environ.get(SERVICE_HOST_ENV), os.environ.get(SERVICE_PORT_ENV)
    configuration = client.Configuration()
    if kubeconfig is None and host and port and (folder / "token").is_file():
        configuration.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        configuration.ssl_ca_cert = str(folder / "ca.crt")
        read_token_before_each_call(configuration, folder / "token")
        return client.ApiClient(configuration)
    path = kubeconfig or os.environ.get("KUBECONFIG")
    config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    token_file = kubeconfig_token_file(Path(path).expanduser() if path else Path.home() / ".kube" / "config")
    if token_file is not None:
        read_token_before_each_call(configuration, token_file)
    return client.ApiClient(configuration)


def read_token_before_each_call(configuration: client.Configuration, token_file: Path) -> None:
    """Authenticate every request with the token file's current content (one small read per call)."""

    def refresh(target: Any) -> None:
        target.api_key["BearerToken"] = f"Bearer {token_file.read_text().strip()}"
        target.api_key_prefix.pop("BearerToken", None)

    refresh(configuration)
    configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]


def kubeconfig_token_file(path: Path) -> Path | None:
    """The current context's ``user.tokenFile`` (relative to the kubeconfig's folder), if it names one."""
    loaded: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    current = loaded.get("current-context")
    context = next((c.get("context") or {} for c in loaded.get("contexts") or [] if c.get("name") == current), {})
    user = next((u.get("user") or {} for u in loaded.get("users") or [] if u.get("name") == context.get("user")), {})
    token_file = user.get("tokenFile")
    return (path.parent / token_file) if token_file else None


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
