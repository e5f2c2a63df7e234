"""A pod's port on a local port, through the API server's ``pods/portforward`` as `kubectl port-forward` does it.

Each local connection is its own port-forward stream, opened with the official ``kubernetes`` client's streaming
(``kubernetes.stream.portforward``); bytes are copied both ways, nothing in them is parsed. Any HTTP client (a
browser, ``urllib``, Ray's SDK) then speaks to the pod's port at ``PortForward.url``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import selectors
import socket
import threading
from types import TracebackType
from typing import Any

from loka_client.errors import ClusterError, LokaError

log = logging.getLogger(__name__)

_HANDSHAKE_STATUS = re.compile(r"Handshake status (\d{3})")
_STATUS_MESSAGE = re.compile(r'"message":"([^"]*)"')
_COPY_BYTES = 1 << 16


class LocalPortError(LokaError):
    """This machine's port cannot be listened on (taken, or not ours to take)."""


class PortForwardError(ClusterError):
    """The API server or the pod's kubelet refused a port-forward stream (``status``: its HTTP status, if any)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, hint="`kubectl describe pod` shows whether the pod runs")
        self.status = status


def open_stream(api: Any, namespace: str, pod: str, port: int) -> tuple[Any, Any]:
    """One port-forward stream to ``pod:port``: (the client's PortForward, its socket). Raises PortForwardError.

    ``kubernetes.stream.portforward`` swaps the API client's transport while it connects, so ``api`` must be an
    ``ApiClient`` that nothing else uses at the same time (PortForward keeps its own).
    """
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import portforward

    try:
        forward = portforward(CoreV1Api(api).connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
    except ApiException as error:
        reason = str(error.reason or error)
        found = _HANDSHAKE_STATUS.search(reason)
        status = int(found.group(1)) if found else (error.status or None)
        message = _status_message(reason) or reason.split(" -+-+- ", maxsplit=1)[0]
        raise PortForwardError(f"port-forward to pod {namespace}/{pod}:{port}: {message}", status) from error
    return forward, forward.socket(port)


def _status_message(reason: str) -> str:
    """The ``message`` of the Status object the API server answered a refused upgrade with, if it sent one."""
    found = _STATUS_MESSAGE.search(reason)
    return found.group(1) if found else ""


class PortForward:
    """``address:local_port`` on this machine reaches ``pod:port`` while this is open (a context manager).

    ``local_port=0`` takes a free one; ``url`` says which. A port already taken raises LocalPortError at ``start()``.
    Connections that the API server refuses are closed at once; ``check()`` asks once and raises the reason.
    """

    def __init__(
        self, api: Any, namespace: str, pod: str, port: int, *, address: str = "127.0.0.1", local_port: int = 0
    ) -> None:
        from kubernetes.client import ApiClient

        # Its own ApiClient: opening a stream swaps the transport of the client it is given (see open_stream).
        self._api: Any = ApiClient(configuration=api.configuration)
        self._opening = threading.Lock()
        self.namespace, self.pod, self.port = namespace, pod, port
        self.address, self.local_port = address, local_port
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self.last_error: PortForwardError | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.address in ("127.0.0.1", "localhost") else self.address
        return f"http://{host}:{self.local_port}"

    def start(self) -> PortForward:
        try:
            listener = socket.create_server((self.address, self.local_port))
        except OSError as error:
            raise LocalPortError(
                f"local port {self.address}:{self.local_port} cannot be listened on ({error.strerror})",
                hint="pick another port (0 takes a free one)",
            ) from error
        self.local_port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, name=f"port-forward {self.pod}:{self.port}", daemon=True).start()
        return self

    def check(self) -> None:
        """Open one stream and close it: raises PortForwardError when the API server or the kubelet refuses."""
        forward, sock = self._open()
        sock.close()
        forward.close()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        self._api.close()

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _open(self) -> tuple[Any, Any]:
        with self._opening:
            return open_stream(self._api, self.namespace, self.pod, self.port)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            forward, remote = self._open()
        except PortForwardError as error:
            self.last_error = error
            log.warning("%s", error)
            conn.close()
            return
        try:
            _copy_both_ways(conn, remote)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with contextlib.suppress(Exception):
                remote.close()
                forward.close()
            error_text = forward.error(self.port)
            if error_text:
                log.warning("port-forward to %s/%s:%d: %s", self.namespace, self.pod, self.port, error_text)


def _copy_both_ways(local: socket.socket, remote: Any) -> None:
    """Copy bytes between the two until either side closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(local, selectors.EVENT_READ, remote)
        selector.register(remote, selectors.EVENT_READ, local)
        while True:
            for key, _ in selector.select():
                try:
                    data = key.fileobj.recv(_COPY_BYTES)  # type: ignore[union-attr]
                except OSError:
                    return
                if not data:
                    return
                try:
                    key.data.sendall(data)
                except OSError:
                    return
