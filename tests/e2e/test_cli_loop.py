"""`loka logs` and `loka dashboard` through a real Ray: the run's head pod is played by the local Ray head (KWOK
serves its port-forward and log, told by the pod shim), and the CLI reaches it through the API server exactly
as in a cluster: pods/portforward (the official client's streaming) for Ray's job API and for the dashboard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from localcluster.controlplane import LocalCluster, kubectl_binary
from localcluster.stack import DemoStack
from tests.e2e.image.loka_e2e_rewards import gate_path
from tests.e2e.test_training_runs import RunWatch, run_manifest

LOKA = str(Path(sys.executable).with_name("loka"))


def loka(cluster: LocalCluster, namespace: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOKA, *args, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_head_port_forward(cluster: LocalCluster, namespace: str, timeout: float = 90) -> None:
    """Until Ray's dashboard answers through the head pod's port-forward. KWOK is the kubelet here and serves it
    only once the pod shim has told it where the local Ray head is and KWOK has loaded that (a real kubelet serves
    a started pod at once): without this wait the CLI races the simulation, not the cluster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = cluster.kubectl("-n", namespace, "get", "pods", "-l", "ray.io/node-type=head", "-o", "name").stdout
        if pods.strip() and _dashboard_answers_through(cluster, namespace, pods.split()[0]):
            return
        time.sleep(0.5)
    pytest.fail(f"no head pod in {namespace} served Ray's dashboard through a port-forward in {timeout} s")


def _dashboard_answers_through(cluster: LocalCluster, namespace: str, pod: str) -> bool:
    forward = subprocess.Popen([kubectl_binary(), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace,
                                "port-forward", pod, ":8265"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)  # fmt: skip
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8265", or nothing when it failed
        if "->" not in line:
            return False
        port = line.split("->")[0].rsplit(":", 1)[1].strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=10) as answer:
            return "ray_version" in json.loads(answer.read())
    except OSError:
        return False
    finally:
        forward.terminate()
        forward.wait(timeout=10)


@pytest.mark.timeout(600)
def test_logs_and_dashboard_of_a_running_run(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, tmp_path: Path
) -> None:
    # The run waits in its first scoring until the test releases it (tests/e2e/image), so the dashboard and the
    # log follower are checked while it surely trains; once released it ends within seconds, and KubeRay deletes
    # its Ray cluster the moment its Ray job ends: the follower must still end with the job's last line and exit 0.
    gate = gate_path(stack.work_dir, e2e_namespace, "watched")
    manifest = run_manifest(e2e_namespace, "watched", training={"maxSteps": 8}, checkpoints={"every": 4},
                            reward={"function": "loka_e2e_rewards:held_until_released"})  # fmt: skip
    path = tmp_path / "watched.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert loka(cluster, e2e_namespace, "submit", "-f", str(path)).returncode == 0
    watch = RunWatch(cluster, e2e_namespace, "watched")
    follower: subprocess.Popen[str] | None = None
    try:
        watch.until(lambda s: s.get("phase") == "Running", timeout=300, what="Running")
        wait_for_head_port_forward(cluster, e2e_namespace)
        # Follow the trainer's output to the end of the run, started first so that the run cannot finish before it.
        follower = subprocess.Popen([LOKA, "logs", "watched", "-f", "-n", e2e_namespace,
                                     "--kubeconfig", str(cluster.kubeconfig)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        # Meanwhile the dashboard, port-forwarded to a local port (8265 is the local Ray head itself here).
        port = free_port()
        dashboard = subprocess.Popen([LOKA, "dashboard", "watched", "--port", str(port), "-n", e2e_namespace,
                                      "--kubeconfig", str(cluster.kubeconfig)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert dashboard.stdout is not None and dashboard.stderr is not None
            line = dashboard.stdout.readline()
            assert f"Ray dashboard of watched: http://localhost:{port}" in line, line + dashboard.stderr.read()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=30) as answer:
                assert "ray_version" in json.loads(answer.read())
        finally:
            dashboard.terminate()
            dashboard.wait(timeout=10)
    except BaseException:
        if follower is not None:
            follower.kill()
        raise
    finally:
        gate.parent.mkdir(parents=True, exist_ok=True)
        gate.touch()  # a run left held would train on for HOLD_SECONDS

    out, err = follower.communicate(timeout=300)
    assert follower.returncode == 0, err
    assert "loka_trainer" in out or "step" in out
    status = watch.until(lambda s: s.get("phase") == "Succeeded", timeout=120, what="Succeeded")
    assert status["attempts"][0]["attempt"] == 1 and status["attempts"][0]["rayJobID"]
    # To its end: the job's last line, written after the last step, although its head pod was deleted right after.
    last_line = stack.ray_job_logs(status["attempts"][0]["rayJobID"]).rstrip().splitlines()[-1]
    assert last_line in out, out[-2000:]

    # After the run its Ray cluster is released: logs say so, with what to do.
    after = loka(cluster, e2e_namespace, "logs", "watched")
    assert after.returncode == 3, after.stdout + after.stderr
    assert "no running Ray cluster" in after.stderr or "gone" in after.stderr
