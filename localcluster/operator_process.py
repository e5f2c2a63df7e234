"""`loka-operator` as a subprocess: the operator integration tests and `bench/reconcile.py` both run it so."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from localcluster.controlplane import LocalCluster, wait_until

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """`loka-operator` in a subprocess, with its log in a file; can be killed and restarted."""

    def __init__(
        self,
        cluster: LocalCluster,
        log_path: Path,
        *,
        submission_mode: str = "HTTPMode",
        namespace_prefix: str,
        resync_seconds: float | None = 15,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.namespace_prefix = namespace_prefix
        self.resync_seconds = resync_seconds  # None: the operator's own default
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.cluster = cluster
        self.log_path = log_path
        self.submission_mode = submission_mode
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.cluster.env, "LOKA_RAYJOB_SUBMISSION_MODE": self.submission_mode}
        env.update(self.extra_env)
        args = [
            str(Path(sys.executable).with_name("loka-operator")),
            "--namespace",
            f"{self.namespace_prefix}*",
            "--metrics-port",
            str(self.metrics_port),
            "--liveness",
            f"http://127.0.0.1:{self.health_port}/healthz",
        ]
        if self.resync_seconds is not None:
            args += ["--resync-seconds", str(self.resync_seconds)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*args, *self.extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            wait_until(self.healthy, timeout=60, what=f"loka-operator liveness (log: {self.log_path})")
        except BaseException:
            self.stop()  # one that never became healthy must not outlive the caller that gives up on it
            raise

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"loka-operator exited; see {self.log_path}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def peak_rss_mb(self) -> float:
        """The operator's peak resident memory so far (VmHWM), in MB."""
        assert self.proc is not None
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{self.proc.pid}/status").read_text(), re.M)
        return int(match.group(1)) / 1024 if match else float("nan")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like an OOM kill or a node loss."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM and return at once, as the kubelet does when a pod is deleted (`exit_code()` tells when it ended)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one (faults.frozen) must run to stop
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
