"""A small async Kubernetes JSON client on aiohttp, sharing kopf's credentials.

The operator's reconcile steps are plain get/create/patch/delete calls on a handful of
resources; an async client keeps them off kopf's event loop without a thread per call, and
answers plain dicts (no model classes). Every request is counted (for the metrics and the
benchmark's "API requests per run").
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
# The API server answers with the object's metadata only: for a Secret, no `data` ever leaves the server.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


def login() -> kopf.ConnectionInfo:
    """The current kubeconfig, or the pod's service account when running in a cluster."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_kubeconfig(settings=settings) or kopf.login_with_service_account(settings=settings)
    if info is None:
        raise kopf.LoginError("no kubeconfig (KUBECONFIG or ~/.kube/config) and no in-cluster service account")
    return info


class KubeClient:
    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        timeout: float = 30.0,
        max_connections: int = 32,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self._on_request = on_request
        self._server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "loka-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._headers = headers
        self._ssl = info.as_ssl_context()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.requests: Counter[str] = Counter()
        self.request_seconds = 0.0

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._max_connections)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: JSON | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> JSON:
        session = self._open()
        self.requests[method] += 1
        if self._on_request is not None:
            self._on_request(method)
        started = time.monotonic()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        try:
            async with session.request(
                method, self._server + path, data=data, params=params, headers=headers or None
            ) as response:
                payload = await response.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ApiError(0, type(error).__name__, str(error) or "connection failed") from error
        finally:
            self.request_seconds += time.monotonic() - started
        try:
            decoded: JSON = json.loads(payload) if payload else {}
        except ValueError:  # e.g. "404 page not found" for a resource the server does not serve
            decoded = {"message": payload[:200].decode(errors="replace")}
        if response.status >= 400:
            raise ApiError(response.status, str(decoded.get("reason", "")), str(decoded.get("message", "")))
        return decoded

    async def get(self, resource: Resource, namespace: str, name: str) -> JSON | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def get_metadata(self, resource: Resource, namespace: str, name: str) -> JSON | None:
        """The object's metadata only (PartialObjectMetadata), or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace, name), accept=METADATA_ONLY)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, resource: Resource, namespace: str | None = None, *, label_selector: str = "") -> list[JSON]:
        params = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", resource.path(namespace), params=params)
        items: list[JSON] = answer.get("items", [])
        return items

    async def create(self, resource: Resource, namespace: str, body: JSON) -> JSON:
        return await self.request("POST", resource.path(namespace), body=body)

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, patch: JSON, *, subresource: str | None = None
    ) -> JSON:
        path = resource.path(namespace, name, subresource)
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """True when something was deleted; a missing object is not an error."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True


TRAINING_RUNS = Resource("loka.dev", "v1alpha1", "trainingruns")
RAYJOBS = Resource("ray.io", "v1", "rayjobs")
WORKLOADS = Resource("kueue.x-k8s.io", "v1beta2", "workloads")
LOCAL_QUEUES = Resource("kueue.x-k8s.io", "v1beta2", "localqueues")
SECRETS = Resource("", "v1", "secrets")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
EVENTS = Resource("", "v1", "events")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
