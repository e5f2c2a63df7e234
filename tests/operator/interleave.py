"""Races made to order: a validating admission webhook on TrainingRun status writes that lets a test act while one
chosen write is inside the API server.

The API server calls the webhook after it read the object and before it stores the write. What the test writes in
that moment (a trainer's progress patch) lands first, so the held write meets a newer object: one conditional on
the resourceVersion it was calculated from fails with 409 Conflict, exactly as when a trainer patch wins the race
by chance; an unconditional one is applied again on top of it. The test can also refuse the held write.

Registered for one namespace label only (the tests' namespaces), failing open, so nothing else is affected.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from localcluster.controlplane import LocalCluster
from loka_api import kinds

LABEL = "loka.dev/interleave-test"

# (old object, new object) -> what to answer: True to let it through, False to refuse it.
Hook = Callable[[dict[str, Any], dict[str, Any]], bool]


@dataclass
class StatusWrites:
    """The webhook's server; `hook` is called for every status write in the labelled namespaces."""

    hook: Hook = lambda _old, _new: True
    refused: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def status_writes(cluster: LocalCluster, kube_api: Any, namespace: str) -> Iterator[StatusWrites]:
    """A webhook on every status write of the TrainingRuns in ``namespace``, for the duration of the block."""
    hooks = StatusWrites()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = review["request"]
            with hooks.lock:
                hooks.calls += 1
            allowed = hooks.hook(request.get("oldObject") or {}, request.get("object") or {})
            if not allowed:
                with hooks.lock:
                    hooks.refused += 1
            answer: dict[str, Any] = {"uid": request["uid"], "allowed": allowed}
            if not allowed:
                answer["status"] = {"code": 403, "message": "refused by the test's webhook"}
            body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    pki = cluster.layout.pki
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(pki.serving_crt), str(pki.serving_key))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    tag = uuid.uuid4().hex[:8]
    name = f"loka-interleave-{tag}"
    core: Any = client.CoreV1Api(kube_api)
    core.patch_namespace(namespace, {"metadata": {"labels": {LABEL: tag}}})
    admission: Any = client.AdmissionregistrationV1Api(kube_api)
    runs = kinds.TRAINING_RUN
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"status.{tag}.interleave.loka.dev",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.server_address[1]}/",
                        "caBundle": base64.b64encode(pki.ca_crt.read_bytes()).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [runs.group],
                            "apiVersions": [runs.version],
                            "operations": ["UPDATE"],
                            "resources": [f"{runs.plural}/status"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {LABEL: tag}},
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 10,
                }
            ],
        }
    )
    try:
        yield hooks
    finally:
        admission.delete_validating_webhook_configuration(name)
        server.shutdown()
        server.server_close()


def notice(body: dict[str, Any], event: str, attempt: int = 1) -> dict[str, Any]:
    """The record of one notice in a run's status ({} when there is none)."""
    records = (body.get("status") or {}).get("notifications") or []
    return next((r for r in records if (r.get("event"), r.get("attempt")) == (event, attempt)), {})
