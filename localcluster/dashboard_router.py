"""Route KubeRay's Ray-dashboard requests to a real Ray head on this machine.

KubeRay talks to a RayCluster's dashboard at `http://<head-svc>.<ns>.svc.cluster.local:8265`.
Under KWOK that address leads nowhere, so the control plane starts KubeRay with
`HTTP_PROXY` pointing here, and this forward proxy sends every such request to the local
Ray dashboard. KubeRay then submits and polls jobs exactly as it would in a cluster.

    python -m localcluster.dashboard_router --listen 127.0.0.1:28265 --dashboard 127.0.0.1:8265
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import http.client
import http.server
import logging
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from email.message import Message
from typing import ClassVar

log = logging.getLogger("dashboard-router")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}  # fmt: skip


def token_fingerprint(headers: Mapping[str, str] | Message) -> str:
    """Which Ray token a request carried (KubeRay sends the RayCluster's in x-ray-authorization), as a short
    sha256 prefix that tests compare with the run's token Secret: never the token itself."""
    presented = headers.get("x-ray-authorization") or headers.get("authorization") or ""
    token = presented.removeprefix("Bearer ").strip()
    return f"token sha256:{hashlib.sha256(token.encode()).hexdigest()[:12]}" if token else "no token"


def namespace_of(host: str) -> str | None:
    """`<service>.<namespace>.svc[.cluster.local][:port]` → namespace; None for any other host."""
    labels = host.rsplit(":", 1)[0].split(".")
    return labels[1] if len(labels) >= 3 and labels[2] == "svc" else None


class _Forwarder(http.server.BaseHTTPRequestHandler):
    dashboard: ClassVar[tuple[str, int]] = ("127.0.0.1", 8265)
    namespaces: ClassVar[tuple[str, ...]] = ("*",)
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        namespace = namespace_of(target.netloc) if target.netloc else None
        if target.netloc and not any(fnmatch.fnmatchcase(namespace or "", p) for p in self.namespaces):
            # Runs in other namespaces see what they would without the router: no dashboard.
            self.send_error(502, f"no Ray dashboard is routed for namespace {namespace!r}")
            return
        path = urllib.parse.urlunsplit(("", "", target.path or "/", target.query, ""))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{self.dashboard[0]}:{self.dashboard[1]}"
        upstream = http.client.HTTPConnection(*self.dashboard, timeout=30)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        except OSError as err:
            log.warning("%s %s (for %s): dashboard unreachable: %s", self.command, path, target.netloc, err)
            self.send_error(502, f"Ray dashboard at {self.dashboard[0]}:{self.dashboard[1]} unreachable")
            return
        finally:
            upstream.close()
        auth = token_fingerprint(self.headers)
        log.info("%s %s (for %s, %s) -> %s", self.command, path, target.netloc, auth, response.status)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are logged in _forward, with the host KubeRay asked for


def serve(
    listen: tuple[str, int], dashboard: tuple[str, int], namespaces: tuple[str, ...] = ("*",)
) -> http.server.ThreadingHTTPServer:
    """Start the router in a background thread and return its server (call `.shutdown()` to stop).

    Only head services in `namespaces` (glob patterns) are routed.
    """
    handler = type("Forwarder", (_Forwarder,), {"dashboard": dashboard, "namespaces": namespaces})
    server = http.server.ThreadingHTTPServer(listen, handler)
    threading.Thread(target=server.serve_forever, name="dashboard-router", daemon=True).start()
    return server


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 28265))
    parser.add_argument("--dashboard", type=_address, default=("127.0.0.1", 8265))
    parser.add_argument("--namespace", action="append", default=[], help="route only these (globs; default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = serve(args.listen, args.dashboard, tuple(args.namespace) or ("*",))
    log.info("routing Ray dashboard requests from %s:%s to %s:%s", *args.listen, *args.dashboard)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
