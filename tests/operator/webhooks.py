"""Broken admission webhooks on RayJobs, as a cluster can have them: one nobody listens for, one that never answers.

Each is registered for one namespace label only, so nothing else on the shared control plane is affected.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from localcluster.operator_process import free_port
from loka_api import kinds

LABEL = "loka.dev/webhook-test"


@contextlib.contextmanager
def rayjob_webhook(
    api: Any, url: str, *, timeout_seconds: int, ca_bundle: bytes | None = None
) -> Iterator[dict[str, str]]:
    """A failing-closed validating webhook on RayJob creates; yields the namespace labels it applies to.
    ``ca_bundle``: the PEM the API server trusts the webhook's certificate by."""
    tag = uuid.uuid4().hex[:8]
    client_config: dict[str, str] = {"url": url}
    if ca_bundle is not None:
        client_config["caBundle"] = base64.b64encode(ca_bundle).decode()
    name = f"loka-test-{tag}"
    admission: Any = client.AdmissionregistrationV1Api(api)
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"rayjobs.{tag}.loka.dev",
                    "clientConfig": client_config,
                    "rules": [
                        {
                            "apiGroups": [kinds.RAY_JOB.group],
                            "apiVersions": [kinds.RAY_JOB.version],
                            "operations": ["CREATE"],
                            "resources": [kinds.RAY_JOB.plural],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {LABEL: tag}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": timeout_seconds,
                }
            ],
        }
    )
    try:
        yield {LABEL: tag}
    finally:
        admission.delete_validating_webhook_configuration(name)


def unreachable_url() -> str:
    """A URL nothing listens on: the API server answers 500 (failed calling webhook) at once."""
    return f"https://127.0.0.1:{free_port()}/validate"


class SilentServer:
    """Accepts the API server's connections and never answers, so each call hangs until the API server gives up;
    `ended` is set when it has hung up. Without ``tls`` (certificate, key) no TLS handshake completes and the API
    server gives up at its TLS handshake timeout, 10 s; with them it reads the request and the API server waits out
    the webhook's own timeoutSeconds."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._closed = threading.Event()
        self.url = f"https://127.0.0.1:{self._socket.getsockname()[1]}/validate"
        self.called = threading.Event()
        self.ended = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connections.append(connection)
            self.called.set()
            threading.Thread(target=self._until_closed, args=(connection,), daemon=True).start()

    def _until_closed(self, connection: socket.socket) -> None:
        try:
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_side=True)
                self._connections.append(connection)
            while connection.recv(4096):
                pass
        except OSError:
            pass
        self.ended.set()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._socket.close()
        for connection in self._connections:
            connection.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
