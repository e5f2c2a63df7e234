"""A small async Kubernetes JSON client on aiohttp, sharing kopf's credentials.

The operator's reconcile steps are plain get/create/patch/delete calls on a handful of
resources; an async client keeps them off kopf's event loop without a thread per call, and
answers plain dicts (no model classes). Every request is counted (for the metrics and the
benchmark's "API requests per run"). When the API server answers 401 (a rotated or expired
token), the client logs in again once and repeats the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

from loka_api.kinds import Kind

log = logging.getLogger(__name__)

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
NOT_LEADING = "NotLeading"  # the reason of the ApiError a fenced write raises
# The API server answers with the object's metadata only: for a Secret, no `data` ever leaves the server.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def refused(self) -> bool:
        """The API server (RBAC, an admission plugin or webhook, a quota, a LimitRange, validation) said no.

        Asking again unchanged gets the same answer until someone changes the cluster; 5xx and connection
        errors are not refusals.
        """
        return self.status in (400, 403, 422)


class KubeClient:
    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        relogin: Callable[[], kopf.ConnectionInfo] | None = None,
        timeout: float = 30.0,
        max_connections: int = 32,
        on_request: Callable[[str], None] | None = None,
        write_deadline: Callable[[], float | None] | None = None,
    ) -> None:
        """`write_deadline`, when given, fences every write: the monotonic time by which it must be done (it is
        abandoned then), or None to refuse it unsent (a replica that does not hold the Lease writes nothing)."""
        self._on_request = on_request
        self._write_deadline = write_deadline
        self._relogin = relogin
        self._server = info.server.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._login_lock = asyncio.Lock()
        self._logins = 0  # how many times the credentials were replaced
        self._tls_identity: tuple[object, ...] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._use(info)
        self.requests: Counter[str] = Counter()
        self.request_seconds = 0.0
        self._writes_in_flight: set[asyncio.Task[tuple[int, bytes]]] = set()

    def _use(self, info: kopf.ConnectionInfo) -> None:
        self._authorization = f"{info.scheme or 'Bearer'} {info.token}" if info.token else None
        identity = (info.ca_path, info.ca_data, info.certificate_path, info.certificate_data, info.private_key_data)
        if self._tls_identity != identity:
            # New CA or client certificate: new connections; requests in flight finish on the old ones.
            self._tls_identity = identity
            self._ssl = info.as_ssl_context()
            if self._session is not None:
                self._retired.append(self._session)
                self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl or True, limit=self._max_connections)
            headers = {"Accept": "application/json", "User-Agent": "loka-operator"}
            self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout, connector=connector)
        return self._session

    async def writes_settled(self) -> None:
        """Wait until every write already sent has been answered (or abandoned at its deadline): after that, nothing
        this client sent can still land."""
        while self._writes_in_flight:
            await asyncio.wait(set(self._writes_in_flight))

    def _write_done(self, sending: asyncio.Task[tuple[int, bytes]]) -> None:
        self._writes_in_flight.discard(sending)
        if not sending.cancelled():
            sending.exception()  # retrieved: a caller cancelled meanwhile does not read it

    async def close(self) -> None:
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()

    async def _login_again(self, failed_at: int) -> bool:
        """Read the credentials again (once for every request that got 401 with the same ones)."""
        if self._relogin is None:
            return False
        async with self._login_lock:
            if self._logins == failed_at:
                # An exec plugin may run a subprocess: keep it off the event loop.
                self._use(await asyncio.to_thread(self._relogin))
                self._logins += 1
                log.info("the API server refused the operator's credentials (401): read them again")
        return True

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
        logins = self._logins
        status, decoded = await self._send(
            method, path, body=body, params=params, content_type=content_type, accept=accept
        )
        if status == 401 and await self._login_again(logins):
            status, decoded = await self._send(
                method, path, body=body, params=params, content_type=content_type, accept=accept
            )
        if status >= 400:
            raise ApiError(status, str(decoded.get("reason", "")), str(decoded.get("message", "")))
        return decoded

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: JSON | None,
        params: dict[str, str] | None,
        content_type: str,
        accept: str | None,
    ) -> tuple[int, JSON]:
        timeout = self._timeout
        if self._write_deadline is not None and method != "GET":
            deadline = self._write_deadline()
            if deadline is None:
                raise ApiError(0, NOT_LEADING, "this replica does not hold the leader Lease: it writes nothing")
            timeout = aiohttp.ClientTimeout(
                total=max(0.01, min(self._timeout.total or 30.0, deadline - time.monotonic()))
            )
        session = self._open()
        self.requests[method] += 1
        if self._on_request is not None:
            self._on_request(method)
        started = time.monotonic()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        if self._authorization is not None:
            headers["Authorization"] = self._authorization

        async def exchange() -> tuple[int, bytes]:
            async with session.request(
                method, self._server + path, data=data, params=params, headers=headers or None, timeout=timeout
            ) as response:
                return response.status, await response.read()

        try:
            if method == "GET":
                status, payload = await exchange()
            else:
                # A write is never cut off mid-flight by its caller's cancellation (it could land all the same):
                # it runs to its answer or its deadline, and `writes_settled()` can tell when none is left.
                sending = asyncio.get_running_loop().create_task(exchange(), name=f"{method} {path}")
                self._writes_in_flight.add(sending)
                sending.add_done_callback(self._write_done)
                status, payload = await asyncio.shield(sending)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ApiError(0, type(error).__name__, str(error) or "connection failed") from error
        finally:
            self.request_seconds += time.monotonic() - started
        try:
            decoded: JSON = json.loads(payload) if payload else {}
        except ValueError:  # e.g. "404 page not found" for a resource the server does not serve
            decoded = {"message": payload[:200].decode(errors="replace")}
        return status, decoded

    async def get(self, resource: Kind, namespace: str, name: str) -> JSON | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def get_metadata(self, resource: Kind, namespace: str, name: str) -> JSON | None:
        """The object's metadata only (PartialObjectMetadata), or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace, name), accept=METADATA_ONLY)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, resource: Kind, namespace: str | None = None, *, label_selector: str = "") -> list[JSON]:
        params = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", resource.path(namespace), params=params)
        items: list[JSON] = answer.get("items", [])
        return items

    async def create(self, resource: Kind, namespace: str, body: JSON) -> JSON:
        return await self.request("POST", resource.path(namespace), body=body)

    async def replace(self, resource: Kind, namespace: str, name: str, body: JSON) -> JSON:
        """PUT: the whole object, guarded by the resourceVersion it carries (409 when someone wrote meanwhile)."""
        return await self.request("PUT", resource.path(namespace, name), body=body)

    async def merge_patch(
        self, resource: Kind, namespace: str, name: str, patch: JSON, *, subresource: str | None = None
    ) -> JSON:
        path = resource.path(namespace, name, subresource)
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, resource: Kind, namespace: str, name: str) -> bool:
        """True when something was deleted; a missing object is not an error."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True
