"""Everything `make demo` and the end-to-end tests run on top of the local control plane.

- a real Ray head on this machine (`ray start --head --block`, from PyPI), whose dashboard
  KubeRay reaches through the dashboard router (KubeRay runs RayJobs in HTTPMode);
- the dashboard router (`localcluster.dashboard_router`) on the port KubeRay's HTTP_PROXY names;
- `loka-operator`, watching the demo and e2e namespaces;
- the kubelet stand-in (`PodShim`): what a kubelet would do for the head pod that the local Ray
  head plays — project the trainer container's ServiceAccount token (with the lifetime the RayJob's
  projected volume asks for, replaced at 80% of it, as the kubelet does), and kill the trainer when
  KubeRay deletes the pods (suspension, preemption, retry). KWOK simulates every other part of a pod.

Each process has a PID file and a log under `.demo/`; `down()` stops them by PID.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from localcluster.controlplane import (
    PORTS,
    REPO_ROOT,
    ClusterError,
    Component,
    Layout,
    LocalCluster,
    http_ok,
)
from loka_api import kinds

log = logging.getLogger("loka.demo")

# The stack's ports move with the control plane's (LOKA_CLUSTER_PORT_OFFSET): a stack left up by one checkout
# does not keep another checkout's stack, on its own offset, from starting.
# The port a Ray head pod serves its dashboard on (what `kubectl port-forward` and KubeRay name).
POD_DASHBOARD_PORT = 8265
RAY_DASHBOARD_PORT = PORTS.ray_dashboard
RAY_GCS_PORT = PORTS.ray_gcs
RAY_AGENT_PORT = PORTS.ray_agent
RAY_CLIENT_PORT = PORTS.ray_client
RAY_WORKER_PORTS = (PORTS.ray_first_worker, PORTS.ray_last_worker)
OPERATOR_HEALTH_PORT = PORTS.operator_health
OPERATOR_METRICS_PORT = PORTS.operator_metrics
# The namespaces the demo's operator watches: the demo's own and the end-to-end tests'.
WATCHED_NAMESPACES = ("loka-demo", "lokae2e-*")
ACTIVE_DEPLOYMENT_STATES = {"Initializing", "Running", "Waiting"}
# A kubelet asks for a fresh projected token once 80% of its lifetime has passed.
TOKEN_REFRESH_AT = 0.8
DEFAULT_TOKEN_SECONDS = 3607
# What the e2e tests' trainer image adds to the trainer: reward functions made for tests (importable by name).
E2E_IMAGE_PATH = REPO_ROOT / "tests" / "e2e" / "image"


# Under load the raylet can miss `ray start`'s 30 s registration window ("The current node timed out during
# startup"); a second start usually makes it.
START_ATTEMPTS = {"ray-head": 2}


def ray_head_ready(dashboard_url: str, agent_url: str) -> bool:
    """Whether the Ray head can run jobs: its dashboard answers, and so does its node's dashboard agent (which runs
    the submitted jobs), reporting the raylet and the GCS alive. The dashboard alone answers before the raylet has
    registered, and keeps answering for the moment `ray start` takes to give up on a raylet that never does."""
    return http_ok(f"{dashboard_url}/api/version") and http_ok(f"{agent_url}/api/healthz")


def _venv_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


class DemoStack:
    """The Ray head, the dashboard router, the operator and the pod shim, over a LocalCluster."""

    def __init__(self, cluster: LocalCluster, root: Path | None = None) -> None:
        self.cluster = cluster
        self.layout = Layout((root or REPO_ROOT / ".demo").resolve())
        self.trainer_kubeconfig = self.layout.root / "trainer.kubeconfig"
        # The head's projected token volume, as the trainer container would see it mounted.
        self.trainer_token = self.layout.root / "serviceaccount" / "token"
        self.work_dir = self.layout.root / "work"

    @property
    def _shim_ready(self) -> Path:
        return self.layout.root / "pod-shim.ready"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{RAY_DASHBOARD_PORT}"

    def components(self) -> list[Component]:
        cluster_env = self.cluster.env
        # The Ray head plays the head pod: it gets what the pod spec would give the trainer.
        # S3 credentials stand in for the secretKeyRef of the run's storage Secret; KUBECONFIG (its user's
        # tokenFile) for the projected ServiceAccount token (written and refreshed by the pod shim, per run).
        ray_env = {
            "AWS_ACCESS_KEY_ID": cluster_env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": cluster_env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": cluster_env["AWS_DEFAULT_REGION"],
            "KUBECONFIG": str(self.trainer_kubeconfig),
            "LOKA_WORK_DIR": str(self.work_dir),
            "PATH": f"{_venv_bin('')}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(E2E_IMAGE_PATH),
            "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray turns token auth on by itself once any local ray.init() has written ~/.ray/auth_token;
            # KubeRay sends no Ray token, and this dashboard listens on loopback only.
            "RAY_AUTH_MODE": "disabled",
            # As in the trainer image: time for the trainer to stop, flush status and exit after SIGTERM.
            "RAY_JOB_STOP_WAIT_TIME_S": "25",
            "TOKENIZERS_PARALLELISM": "false",
            # Ray refuses new objects (and a trainer waits on them) once its disk is 95% used: on a large shared disk
            # that is still gigabytes free, far more than the demo's few megabytes of objects need.
            "RAY_local_fs_capacity_threshold": "0.99",
        }
        return [
            Component(
                name="ray-head",
                ports=(RAY_GCS_PORT, RAY_DASHBOARD_PORT, RAY_AGENT_PORT),
                binary=_venv_bin("ray"),
                args=[
                    "start",
                    "--head",
                    "--block",
                    f"--port={RAY_GCS_PORT}",
                    "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={RAY_DASHBOARD_PORT}",
                    f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
                    f"--ray-client-server-port={RAY_CLIENT_PORT}",
                    f"--min-worker-port={RAY_WORKER_PORTS[0]}",
                    f"--max-worker-port={RAY_WORKER_PORTS[1]}",
                    "--num-cpus=2",
                    "--disable-usage-stats",
                ],
                env=ray_env,
                health=lambda: ray_head_ready(self.dashboard_url, f"http://127.0.0.1:{RAY_AGENT_PORT}"),
                layout=self.layout,
                startup_timeout=300,  # the dashboard can take minutes on 2 busy cores
            ),
            Component(
                name="dashboard-router",
                ports=(PORTS.dashboard_router,),
                binary=Path(sys.executable),
                args=[
                    "-m",
                    "localcluster.dashboard_router",
                    f"--listen=127.0.0.1:{PORTS.dashboard_router}",
                    f"--dashboard=127.0.0.1:{RAY_DASHBOARD_PORT}",
                    *(f"--namespace={ns}" for ns in WATCHED_NAMESPACES),
                ],
                env={"PYTHONPATH": str(REPO_ROOT)},
                health=lambda: http_ok(f"http://127.0.0.1:{PORTS.dashboard_router}/api/version"),
                layout=self.layout,
            ),
            Component(
                name="loka-operator",
                ports=(OPERATOR_HEALTH_PORT, OPERATOR_METRICS_PORT),
                binary=_venv_bin("loka-operator"),
                args=[
                    *(f"--namespace={ns}" for ns in WATCHED_NAMESPACES),
                    f"--liveness=http://127.0.0.1:{OPERATOR_HEALTH_PORT}/healthz",
                    f"--metrics-port={OPERATOR_METRICS_PORT}",
                    "--resync-seconds=15",
                ],
                # KubeRay submits the trainer to the (local) Ray dashboard itself, as in a cluster.
                env={"KUBECONFIG": str(self.cluster.kubeconfig), "LOKA_RAYJOB_SUBMISSION_MODE": "HTTPMode"},
                health=lambda: http_ok(f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/healthz"),
                before=self._apply_crd,
                layout=self.layout,
            ),
            Component(
                name="pod-shim",
                binary=Path(sys.executable),
                args=["-m", "localcluster.stack", "pod-shim"],
                env={
                    "PYTHONPATH": str(REPO_ROOT),
                    "LOKA_CLUSTER_DIR": str(self.cluster.layout.root),
                    "LOKA_DEMO_DIR": str(self.layout.root),
                },
                health=self._shim_ready.exists,
                before=lambda: self._shim_ready.unlink(missing_ok=True),
                layout=self.layout,
            ),
        ]

    def up(self, echo: Callable[[str], None] = print) -> None:
        for sub in ("logs", "pids"):
            (self.layout.root / sub).mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        started: list[Component] = []
        try:
            for component in self.components():
                if component.is_healthy():
                    echo(f"  {component.name:<24} already running (pid {component.pid()})")
                    continue
                started.append(component)
                pid = self.start(component, echo)
                echo(f"  {component.name:<24} ready (pid {pid}, log {component.log})")
        except BaseException:
            # A stack half up holds the machine's Ray ports and serves no run: stop what this call started.
            for component in reversed(started):
                component.stop(timeout=45)
            raise

    @staticmethod
    def start(component: Component, echo: Callable[[str], None] = print) -> int:
        """Start ``component`` and wait until it is healthy, again if its first start failed and START_ATTEMPTS
        allows; raise if it never was. Nothing is left half-started."""
        attempts, attempt = START_ATTEMPTS.get(component.name, 1), 1
        while True:
            component.stop()
            try:
                if component.before:
                    component.before()
                pid = component.start()
                component.wait_healthy()
                return pid
            except (ClusterError, subprocess.CalledProcessError) as err:
                component.stop()
                if attempt == attempts:
                    raise ClusterError(f"{component.name} failed to start: {err}") from err
                echo(f"  {component.name:<24} failed to start (attempt {attempt}/{attempts}), starting it again:")
                echo(str(err))
                attempt += 1

    def is_up(self) -> bool:
        return all(c.is_healthy() for c in self.components())

    def check_alive(self) -> None:
        """Raise if a process of the stack has died since it started (a run would otherwise wait on it forever)."""
        for component in self.components():
            if component.pid() is None:
                raise ClusterError(f"{component.name} is no longer running.\n{component.log_tail()}")

    def down(self, echo: Callable[[str], None] = print) -> None:
        for component in reversed(self.components()):
            if component.pid() is not None:
                echo(f"  stopping {component.name} (pid {component.pid()})")
            component.stop(timeout=45)  # the Ray head drains its workers first

    def _apply_crd(self) -> None:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
        self.cluster.wait_for_crds("trainingruns.loka.dev", "evaluations.loka.dev", "rewardcycles.loka.dev")

    def diagnosis(self, log_lines: int = 15) -> str:
        """What a person looks at when a run never moves: whether each process of the stack is alive, the free disk
        under the stack's folder, each Ray job's state and the last lines of any unfinished job's driver log. Never
        raises: it is read while something already failed."""
        lines = []
        for component in self.components():
            pid = component.pid()
            lines.append(f"{component.name}: {f'pid {pid}' if pid else 'NOT RUNNING'}")
        try:
            usage = shutil.disk_usage(self.layout.root)
            lines.append(
                f"disk under {self.layout.root}: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.0f} GiB"
            )
        except OSError as err:
            lines.append(f"disk under {self.layout.root}: unknown ({err})")
        try:
            jobs = self.ray_jobs()
        except (OSError, ValueError) as err:
            return "\n".join([*lines, f"Ray's job API did not answer: {err}"])
        for job in jobs:
            sid = job.get("submission_id") or job.get("job_id") or "?"
            lines.append(f"Ray job {sid}: {job.get('status')} {(job.get('message') or '')[:200]}")
            if job.get("status") in ("PENDING", "RUNNING"):
                try:
                    tail = self.ray_job_logs(str(sid)).splitlines()[-log_lines:]
                except (OSError, ValueError) as err:
                    tail = [f"(its log did not answer: {err})"]
                lines += [f"  | {line[:240]}" for line in tail]
        return "\n".join(lines)

    # ----- Ray's job API, as the pod shim and the summary use it ---------------------------------

    def ray_jobs(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/", timeout=5) as response:
            jobs: list[dict[str, Any]] = json.loads(response.read())
            return jobs

    def stop_ray_job(self, submission_id: str) -> None:
        request = urllib.request.Request(f"{self.dashboard_url}/api/jobs/{submission_id}/stop", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def ray_job_logs(self, submission_id: str) -> str:
        with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/{submission_id}/logs", timeout=10) as response:
            logs: str = json.loads(response.read()).get("logs", "")
            return logs


class PodShim:
    """The kubelet's part for the head pod that the local Ray head stands in for.

    - While a RayJob is active, the trainer needs its container's ServiceAccount token: write a
      token for the RayJob head's ServiceAccount (TokenRequest, with the lifetime its projected
      volume asks for, replaced at 80% of it, as the kubelet does) and a kubeconfig whose
      `tokenFile` names it. The local Ray runs one trainer at a time in the demo.
    - When KubeRay deletes a RayJob's cluster (suspend, preemption, retry, deletion), the pods'
      processes would die: stop every Ray job whose RayJob is no longer active with that job id.
    - What a kubelet serves for the head pod, KWOK serves once told (its PortForward and Logs objects): the pod's
      dashboard port is the local Ray dashboard, its log the Ray head's, so `kubectl port-forward`, `kubectl logs`,
      `loka dashboard` and `loka logs` reach them through the API server as in a cluster.
    """

    def __init__(self, stack: DemoStack, interval: float = 1.0) -> None:
        self.stack = stack
        self.interval = interval
        self._token_for: str | None = None
        self._refresh_at = 0.0
        self._served: set[tuple[str, str]] = set()  # head pods KWOK already serves for the local Ray
        self._log_offset = 0

    def run_forever(self, ready: Path) -> None:
        from kubernetes import client

        api = self.stack.cluster.api_client()
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.cri_log.unlink(missing_ok=True)  # rewritten from the Ray head's log, from its start
        ready.touch()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(self.interval):
            try:
                self._sync(custom, core)
            except Exception as err:  # keep shimming through API hiccups; log and retry
                log.warning("pod shim: %s", err)

    def _sync(self, custom: Any, core: Any) -> None:
        rayjobs = custom.list_cluster_custom_object(*kinds.RAY_JOB.gvr)["items"]
        active = [
            job
            for job in rayjobs
            if any(fnmatch.fnmatchcase(job["metadata"]["namespace"], p) for p in WATCHED_NAMESPACES)
            and job.get("status", {}).get("jobDeploymentStatus") in ACTIVE_DEPLOYMENT_STATES
            and not job["spec"].get("suspend")
            and not job["metadata"].get("deletionTimestamp")
        ]
        if active:
            self._project_token(core, active[-1])
        self._serve_head_pods(custom, core, active)
        live_ids = {job["status"].get("jobId") for job in active}
        for ray_job in self.stack.ray_jobs():
            if ray_job.get("status") in ("PENDING", "RUNNING") and ray_job.get("submission_id") not in live_ids:
                log.info("pod shim: RayJob for Ray job %s is gone or suspended; stopping it", ray_job["submission_id"])
                self.stack.stop_ray_job(ray_job["submission_id"])

    def _serve_head_pods(self, custom: Any, core: Any, active: list[dict[str, Any]]) -> None:
        """KWOK is the kubelet of every pod; tell it that an active RayJob's head pod is the local Ray head: its
        dashboard port is the local dashboard (`kubectl port-forward`) and its log is the Ray head's (`kubectl
        logs`, in the container runtime's log format, which the shim writes from the Ray head's plain log)."""
        self._write_cri_log()
        for rayjob in active:
            namespace = rayjob["metadata"]["namespace"]
            ray_cluster = (rayjob.get("status") or {}).get("rayClusterName")
            if not ray_cluster:
                continue
            pods = core.list_namespaced_pod(
                namespace, label_selector=f"ray.io/cluster={ray_cluster},ray.io/node-type=head"
            )
            for pod in pods.items:
                name = pod.metadata.name
                if (namespace, name) in self._served:
                    continue
                forward = {
                    "forwards": [
                        {"ports": [POD_DASHBOARD_PORT], "target": {"port": RAY_DASHBOARD_PORT, "address": "127.0.0.1"}}
                    ]
                }
                logs = {"logs": [{"containers": ["ray-head"], "logsFile": str(self.cri_log), "follow": True}]}
                for kind, plural, spec in (("PortForward", "portforwards", forward), ("Logs", "logs", logs)):
                    body = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": kind,
                            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip
                    try:
                        custom.create_namespaced_custom_object("kwok.x-k8s.io", "v1alpha1", namespace, plural, body)
                    except Exception as err:
                        if getattr(err, "status", None) != 409:
                            raise
                self._served.add((namespace, name))
                log.info("pod shim: head pod %s/%s serves the local Ray's dashboard and log", namespace, name)

    @property
    def cri_log(self) -> Path:
        return self.stack.layout.logs / "ray-head.cri.log"

    def _write_cri_log(self) -> None:
        """Append the Ray head's new log lines to `cri_log` as `<time> stdout F <line>` (what KWOK serves)."""
        source = self.stack.layout.logs / "ray-head.log"
        try:
            with source.open("rb") as handle:
                handle.seek(self._log_offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return
        self._log_offset += len(complete) + 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        lines = complete.decode(errors="replace").split("\n")
        with self.cri_log.open("a") as out:
            out.writelines(f"{stamp} stdout F {line}\n" for line in lines)

    def _project_token(self, core: Any, rayjob: dict[str, Any]) -> None:
        namespace = rayjob["metadata"]["namespace"]
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        account = head.get("serviceAccountName", "default")
        # One token per RayJob, as a kubelet projects one per pod: a run deleted and created again has a
        # new ServiceAccount under the same name, and the old token no longer authenticates.
        key = f"{namespace}/{account}"
        owner = f"{key}@{rayjob['metadata']['uid']}"
        if owner == self._token_for and time.monotonic() < self._refresh_at:
            return
        seconds = projected_token_seconds(head)
        token = core.create_namespaced_service_account_token(
            account, namespace, {"spec": {"audiences": [], "expirationSeconds": seconds}}
        ).status.token
        _replace(self.stack.trainer_token, token)
        self._refresh_at = time.monotonic() + TOKEN_REFRESH_AT * seconds
        if owner == self._token_for:
            log.info("pod shim: refreshed the token of ServiceAccount %s", key)
            return
        cluster = self.stack.cluster
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": cluster.server,
                                                       "certificate-authority": str(cluster.layout.pki.ca_crt)}}],
            "users": [{"name": key, "user": {"tokenFile": str(self.stack.trainer_token)}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": key, "namespace": namespace}}],
            "current-context": "pod",
        }  # fmt: skip
        _replace(self.stack.trainer_kubeconfig, yaml.safe_dump(config))
        self._token_for = owner
        log.info("pod shim: projected the token of ServiceAccount %s for %d s", key, seconds)


def projected_token_seconds(pod_spec: dict[str, Any]) -> int:
    """The lifetime the pod's projected ServiceAccount token volume asks for (the kubelet's default otherwise)."""
    for volume in pod_spec.get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return int(source["serviceAccountToken"].get("expirationSeconds", DEFAULT_TOKEN_SECONDS))
    return DEFAULT_TOKEN_SECONDS


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once (the kubelet swaps a projected volume's files atomically too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    """`python -m localcluster.stack pod-shim`: the shim as its own process (the stack starts it)."""
    if argv != ["pod-shim"]:
        print("usage: python -m localcluster.stack pod-shim", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cluster = LocalCluster(Path(os.environ["LOKA_CLUSTER_DIR"]))
    stack = DemoStack(cluster, Path(os.environ["LOKA_DEMO_DIR"]))
    PodShim(stack).run_forever(stack.layout.root / "pod-shim.ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
