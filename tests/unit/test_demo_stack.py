"""The demo stack calls its Ray head ready only once the head can run jobs, and starts it again when it dies at start.

Under load the raylet can miss `ray start`'s 30 s registration window: `ray start` then prints "The current node timed
out during startup" and exits, taking the dashboard with it. The dashboard answers before that, so a readiness check
on the dashboard alone once reported such a head ready; the demo's runs then sat Running until its timeout.
A stand-in `ray` plays that head here: its dashboard answers, its node never does, it exits a moment later.
"""

from __future__ import annotations

import dataclasses
import stat
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from localcluster import stack as demo_stack
from localcluster.controlplane import ClusterError, Component
from localcluster.operator_process import free_port
from localcluster.stack import DemoStack

FAKE_RAY = """\
#!{python}
# A `ray start --head --block` whose first FAILS starts die as a raylet that never registers does: the dashboard
# answers, the node's agent never does, and the command exits. Later starts serve both and block.
import http.server, os, sys, threading, time
from pathlib import Path

starts = Path(os.environ["FAKE_RAY_STARTS"])
start = len(starts.read_text()) if starts.exists() else 0
starts.write_text("x" * (start + 1))
dead = start < int(os.environ["FAKE_RAY_FAILS"])

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

def serve(port):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()

serve(int(os.environ["FAKE_RAY_DASHBOARD"]))
if dead:
    time.sleep(1.5)
    print("Exception: The current node timed out during startup.", flush=True)
    sys.exit(1)
serve(int(os.environ["FAKE_RAY_AGENT"]))
print("Ray runtime started.", flush=True)
time.sleep(600)
"""


def fake_ray_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fails: int) -> Component:
    """The demo stack's own ray-head component (its readiness check, its retries), running the stand-in `ray`."""
    dashboard, agent = free_port(), free_port()
    monkeypatch.setattr(demo_stack, "RAY_DASHBOARD_PORT", dashboard)
    monkeypatch.setattr(demo_stack, "RAY_AGENT_PORT", agent)
    binary = tmp_path / "bin" / "ray"
    binary.parent.mkdir()
    binary.write_text(textwrap.dedent(FAKE_RAY).format(python=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    secrets = dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"), "x")
    cluster = SimpleNamespace(env=secrets, kubeconfig=tmp_path / "kubeconfig", layout=SimpleNamespace(root=tmp_path))
    stack = DemoStack(cluster, tmp_path / "demo")  # type: ignore[arg-type]
    head = next(c for c in stack.components() if c.name == "ray-head")
    env = {"FAKE_RAY_STARTS": str(tmp_path / "starts"), "FAKE_RAY_FAILS": str(fails),
           "FAKE_RAY_DASHBOARD": str(dashboard), "FAKE_RAY_AGENT": str(agent)}  # fmt: skip
    for folder in ("logs", "pids"):
        (tmp_path / "demo" / folder).mkdir(parents=True)
    return dataclasses.replace(head, binary=binary, args=[], env=env, ports=(), startup_timeout=30)


def test_a_ray_head_that_dies_at_start_is_started_again_not_reported_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = fake_ray_head(tmp_path, monkeypatch, fails=1)
    said: list[str] = []
    try:
        pid = DemoStack.start(head, said.append)
        assert head.is_healthy() and head.pid() == pid
    finally:
        head.stop()
    assert "ray-head" in said[0] and "failed to start (attempt 1/2)" in said[0]
    assert "The current node timed out during startup" in said[1]


def test_a_ray_head_that_dies_at_every_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = fake_ray_head(tmp_path, monkeypatch, fails=2)
    with pytest.raises(ClusterError, match=r"(?s)ray-head failed to start.*timed out during startup"):
        DemoStack.start(head, lambda _: None)
    assert head.pid() is None


def test_a_stack_that_cannot_come_up_stops_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = fake_ray_head(tmp_path, monkeypatch, fails=0)
    broken = dataclasses.replace(head, name="loka-operator", health=lambda: False, startup_timeout=3)
    monkeypatch.setattr(DemoStack, "components", lambda self: [head, broken])
    with pytest.raises(ClusterError, match="loka-operator failed to start"):
        DemoStack(head.layout.root, head.layout.root).up(lambda _: None)  # type: ignore[arg-type]
    assert head.pid() is None, "the Ray head the failed start began is stopped: it holds the machine's Ray ports"
