"""KubeRay's dashboard calls, sent through the router as through an HTTP proxy, reach the local dashboard."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from localcluster.dashboard_router import serve


class _FakeDashboard(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = json.dumps({"path": self.path, "host": self.headers["Host"], "entrypoint": body["entrypoint"]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()


def _opener(router_port: int) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{router_port}"}))


def test_a_job_submission_for_a_head_service_reaches_the_local_dashboard(dashboard: tuple[str, int]) -> None:
    router = serve(("127.0.0.1", 0), dashboard)
    try:
        request = urllib.request.Request(
            "http://demo-raycluster-abc12-head-svc.loka.svc.cluster.local:8265/api/jobs/?x=1",
            data=json.dumps({"entrypoint": "loka-trainer run"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _opener(router.server_address[1]).open(request, timeout=5) as response:
            answer = json.loads(response.read())
    finally:
        router.shutdown()
    assert answer == {"path": "/api/jobs/?x=1", "host": f"{dashboard[0]}:{dashboard[1]}",
                      "entrypoint": "loka-trainer run"}  # fmt: skip


def test_an_unreachable_dashboard_is_a_502_that_says_where_it_looked() -> None:
    router = serve(("127.0.0.1", 0), ("127.0.0.1", 9))  # discard port: nothing listens
    try:
        with pytest.raises(urllib.error.HTTPError) as failure:
            _opener(router.server_address[1]).open("http://x-head-svc.ns.svc.cluster.local:8265/api/version", timeout=5)
    finally:
        router.shutdown()
    assert failure.value.code == 502
    assert "127.0.0.1:9 unreachable" in failure.value.read().decode()


def test_head_services_outside_the_routed_namespaces_get_no_dashboard(dashboard: tuple[str, int]) -> None:
    router = serve(("127.0.0.1", 0), dashboard, namespaces=("loka-demo", "lokae2e-*"))
    body = json.dumps({"entrypoint": "loka-trainer run"}).encode()
    try:
        opener = _opener(router.server_address[1])
        routed = "http://run-head-svc.lokae2e-abc.svc.cluster.local:8265/api/jobs/"
        with opener.open(urllib.request.Request(routed, data=body, method="POST"), timeout=5) as response:
            assert json.loads(response.read())["path"] == "/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            other = "http://run-head-svc.team-a.svc.cluster.local:8265/api/jobs/"
            opener.open(urllib.request.Request(other, data=body, method="POST"), timeout=5)
    finally:
        router.shutdown()
    assert refused.value.code == 502
    assert "'team-a'" in refused.value.read().decode()
