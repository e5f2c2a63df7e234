"""Two replicas: one leads through a coordination.k8s.io Lease, the other stands by and takes over when it dies,
stalls, freezes or is cut off; the API server's audit log shows that a replica without the Lease writes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import PORTS, LocalCluster
from localcluster.faults import FaultProxy, frozen
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import drive_rayjob, eventually, fresh_namespace, metric, run_manifest, wait_phase
from tests.operator.kube import Kube

SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}
# Seconds, so that a hand-over takes a few of them (the operator's defaults are controller-runtime's 15/10/2).
LEASE, DEADLINE, RETRY = 6.0, 4.0, 1.0


@dataclass
class Replica:
    name: str  # POD_NAME; the Lease's holder identity starts with it
    user: str  # who the API server's audit log says wrote
    proxy: FaultProxy  # every byte between it and the API server
    process: OperatorProcess


@dataclass
class Replicas:
    ns: str
    lease: str
    both: tuple[Replica, Replica]

    def by_holder(self, holder: str) -> tuple[Replica, Replica]:
        """(the one holding the Lease, the other one)."""
        first, second = self.both
        return (first, second) if holder.startswith(f"{first.name}_") else (second, first)


@dataclass
class Election:
    """One Lease and the namespace whose runs the replicas competing for it reconcile."""

    cluster: LocalCluster
    ns: str
    prefix: str
    lease: str
    folder: Path
    stack: ExitStack

    def args(self) -> tuple[str, ...]:
        return (
            *("--leader-elect", "--leader-elect-namespace", self.ns, "--leader-elect-lease", self.lease),
            *("--leader-elect-lease-duration", str(LEASE), "--leader-elect-renew-deadline", str(DEADLINE)),
            *("--leader-elect-retry-period", str(RETRY)),
        )

    def replica(self, name: str, kubeconfig: Callable[[str, FaultProxy], tuple[str, Path]] | None = None) -> Replica:
        """A replica behind its own proxy, not started; `kubeconfig(name, proxy)` gives (user, kubeconfig)."""
        proxy = self.stack.enter_context(FaultProxy(PORTS.apiserver))
        if kubeconfig is None:
            user = f"loka-{name}-{uuid.uuid4().hex[:4]}"
            path = self.cluster.kubeconfig_for(user, server=proxy.server)
        else:
            user, path = kubeconfig(name, proxy)
        process = OperatorProcess(
            self.cluster,
            self.folder / f"{name}.log",
            namespace_prefix=self.prefix,
            extra_args=self.args(),
            env={"POD_NAME": name, "KUBECONFIG": str(path)},
        )
        self.stack.callback(process.stop)
        return Replica(name, user, proxy, process)


@pytest.fixture
def election(cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path) -> Iterator[Election]:
    prefix = f"lokale-{uuid.uuid4().hex[:4]}-"
    namespaces = fresh_namespace(kube, prefix)
    with ExitStack() as stack:
        yield Election(cluster, next(namespaces), prefix, f"loka-{uuid.uuid4().hex[:6]}", tmp_path, stack)
    next(namespaces, None)


@pytest.fixture
def replicas(election: Election) -> Replicas:
    """Two operator processes competing for one Lease, each its own API user behind its own fault proxy."""
    both = (election.replica("replica-a"), election.replica("replica-b"))
    for replica in both:
        replica.process.start()  # healthy while standing by, too
    return Replicas(election.ns, election.lease, both)


def holder(kube: Kube, ns: str, lease: str) -> str:
    from kubernetes import client

    leases: Any = client.CoordinationV1Api(kube.api)
    try:
        found = leases.read_namespaced_lease(lease, ns)
    except client.exceptions.ApiException:
        return ""
    return str(found.spec.holder_identity or "")


def test_one_replica_leads_and_a_killed_leader_hands_over_without_duplicates(replicas: Replicas, kube: Kube) -> None:
    ns, lease = replicas.ns, replicas.lease
    leading = eventually(lambda: holder(kube, ns, lease), what="a replica to take the Lease")
    leader, standby = (r.process for r in replicas.by_holder(leading))

    names = [f"run-{i}" for i in range(3)]
    for name in names:
        kube.create_run(run_manifest(name, ns, resources=SMALL))
    before = {name: wait_phase(kube, ns, name, "Running", timeout=120) for name in names}
    assert metric(leader, "loka_leader") == 1
    assert metric(standby, "loka_leader") == 0
    assert metric(standby, "loka_reconcile_total") == 0  # the standby watches nothing and writes nothing

    killed = time.monotonic()
    leader.kill()
    # While nobody leads: a new run arrives and a running one finishes.
    kube.create_run(run_manifest("run-late", ns, resources=SMALL))
    drive_rayjob(kube, ns, "run-0", "Complete", "SUCCEEDED")

    standby_name = f"{replicas.by_holder(leading)[1].name}_"
    eventually(lambda: holder(kube, ns, lease).startswith(standby_name), timeout=30, what="the standby to lead")
    print(f"handover: the standby held the Lease {time.monotonic() - killed:.1f}s after the leader was killed")

    wait_phase(kube, ns, "run-0", "Succeeded")
    wait_phase(kube, ns, "run-late", "Running", timeout=120)
    for name in names[1:]:
        status = kube.status(ns, name)
        assert status["phase"] == "Running"
        assert (status["attempt"], status["startTime"]) == (1, before[name]["startTime"])  # nothing lost or redone
    rayjobs = sorted(r["metadata"]["name"] for r in kube.rayjobs(ns))
    assert rayjobs == sorted([*names, "run-late"])
    clusters = kube.list("ray.io", "v1", "rayclusters", ns)
    owners = [ref["name"] for c in clusters for ref in c["metadata"]["ownerReferences"]]
    assert len(owners) == len(set(owners))  # one Ray cluster per RayJob at most
    accounts = [sa.metadata.name for sa in kube.core.list_namespaced_service_account(ns).items]
    assert sorted(a for a in accounts if a.startswith("loka-run-")) == sorted(f"loka-run-{n}" for n in rayjobs)
    assert metric(standby, "loka_leader") == 1


# A stopped leader lets go at once: the standby leads by its next try (RETRY), not after the Lease expires (LEASE).
HANDOVER_SECONDS = 2 * RETRY + 2.0
EXIT_SECONDS = 10.0  # well inside a pod's default grace period (30 s), after which the kubelet kills it


def test_a_stopped_leader_lets_go_at_once_and_writes_nothing_after(
    replicas: Replicas, kube: Kube, cluster: LocalCluster
) -> None:
    """A rolling update: SIGTERM to the leader while it is launching runs. It stops writing at once, releases the
    Lease, the standby leads within seconds and finishes the launches; nothing of the old leader lands after."""
    ns, lease = replicas.ns, replicas.lease
    leader, standby = replicas.by_holder(eventually(lambda: holder(kube, ns, lease), what="a replica to lead"))
    names = [f"run-{i}" for i in range(6)]
    for name in names:
        kube.create_run(run_manifest(name, ns, resources=SMALL))
    working = lambda: [e for e in _writes(cluster, leader, ns) if e.resource != "leases"]  # noqa: E731
    eventually(working, timeout=60, interval=0.05, what="the leader to start writing")

    stopped = time.monotonic()
    leader.process.terminate()
    eventually(
        lambda: holder(kube, ns, lease).startswith(f"{standby.name}_"),
        timeout=LEASE + 30,
        interval=0.1,
        what="the standby to lead",
    )
    handover = time.monotonic() - stopped
    eventually(lambda: leader.process.exit_code() is not None, timeout=60, what="the stopped leader to exit")
    exited = time.monotonic() - stopped
    print(f"handover: the standby led {handover:.1f}s after SIGTERM; the old leader exited after {exited:.1f}s")
    assert handover < HANDOVER_SECONDS, f"the standby led {handover:.1f}s after SIGTERM (the Lease lasts {LEASE:g}s)"
    assert leader.process.exit_code() == 0
    assert exited < EXIT_SECONDS

    for name in names:
        wait_phase(kube, ns, name, "Running", timeout=120)
    # The release is the old leader's last write: nothing it started lands after it let go.
    writes = [e for e in _writes(cluster, leader, ns) if e.landed]
    release = max(e.received for e in writes if e.resource == "leases")
    late = [str(e) for e in writes if e.resource != "leases" and e.received >= release]
    assert late == [], f"the old leader wrote after it released the Lease at {release.isoformat()}"
    acquired = min(e.received for e in _writes(cluster, standby, ns) if e.resource == "leases" and e.landed)
    assert release <= acquired
    # What the two did together is whole: one RayJob and one ServiceAccount per run, none twice.
    assert sorted(r["metadata"]["name"] for r in kube.rayjobs(ns)) == sorted(names)
    accounts = [sa.metadata.name for sa in kube.core.list_namespaced_service_account(ns).items]
    assert sorted(a for a in accounts if a.startswith("loka-run-")) == sorted(f"loka-run-{n}" for n in names)
    created = [
        (e.resource, e.name)
        for r in replicas.both
        for e in _writes(cluster, r, ns)
        if e.verb == "create" and e.landed and e.resource not in ("leases", "events")
    ]
    assert len(created) == len(set(created)), "a child was created twice"


@contextmanager
def _stall(leader: Replica) -> Iterator[None]:
    """The API server accepts the leader's connections and bytes and answers nothing (held, then delivered)."""
    leader.proxy.stall()
    yield
    leader.proxy.pass_()


@contextmanager
def _freeze(leader: Replica) -> Iterator[None]:
    """SIGSTOP: the leader neither renews nor dies; SIGCONT after the standby took over."""
    with frozen(leader.process.pid):
        yield


@contextmanager
def _partition(leader: Replica) -> Iterator[None]:
    """Every byte between the leader and the API server vanishes, both ways; then the network heals."""
    leader.proxy.drop()
    yield
    leader.proxy.pass_()


@pytest.mark.parametrize("fault", [_stall, _freeze, _partition], ids=["stalled", "frozen", "partitioned"])
def test_a_cut_off_leader_writes_nothing_once_the_standby_holds_the_lease(
    replicas: Replicas, kube: Kube, cluster: LocalCluster, fault: Callable[[Replica], AbstractContextManager[None]]
) -> None:
    ns, lease = replicas.ns, replicas.lease
    leader, standby = replicas.by_holder(eventually(lambda: holder(kube, ns, lease), what="a replica to lead"))
    names = [f"run-{i}" for i in range(4)]
    for name in names:
        kube.create_run(run_manifest(name, ns, resources=SMALL))
    # Cut the leader off in the middle of its work: once its first write for these runs landed.
    working = lambda: [e for e in _writes(cluster, leader, ns) if e.resource != "leases"]  # noqa: E731
    eventually(working, timeout=60, interval=0.05, what="the leader to start writing")

    with fault(leader):  # when it ends, the old leader may talk to the API server again
        eventually(lambda: holder(kube, ns, lease).startswith(f"{standby.name}_"), timeout=60, what="a hand-over")
        kube.create_run(run_manifest("run-late", ns, resources=SMALL))
        for name in [*names, "run-late"]:
            wait_phase(kube, ns, name, "Running", timeout=120)

    # The old leader learns it lost the Lease and ends (the pod would restart and stand by).
    eventually(lambda: leader.process.exit_code() is not None, timeout=60, what="the deposed leader to exit")
    acquired = min(e.received for e in _writes(cluster, standby, ns) if e.resource == "leases" and e.landed)
    late = [str(e) for e in _writes(cluster, leader, ns) if e.landed and e.received >= acquired]
    assert late == [], f"the deposed leader wrote after {acquired.isoformat()}"
    assert leader.process.exit_code() == 1
    # What the new leader did is whole: one RayJob and one ServiceAccount per run.
    rayjobs = sorted(r["metadata"]["name"] for r in kube.rayjobs(ns))
    assert rayjobs == sorted([*names, "run-late"])
    assert metric(standby.process, "loka_leader") == 1


def _writes(cluster: LocalCluster, replica: Replica, ns: str) -> list[Any]:
    """The replica's writes in `ns` that the API server answered, oldest first."""
    return [e for e in cluster.audit_log.events(user=replica.user) if e.namespace == ns]


@dataclass
class RevocableLogin:
    """A ServiceAccount with cluster-admin whose token dies with a Secret, in a kubeconfig file that can break."""

    kube: Kube
    ns: str
    account: str
    path: Path
    server: str = ""
    anchor: str = ""

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.ns}:{self.account}"

    def kubeconfig(self, _name: str, proxy: FaultProxy) -> tuple[str, Path]:
        self.server = proxy.server
        self.restore()
        return self.user, self.path

    def restore(self) -> None:
        """A fresh token in a readable kubeconfig."""
        self.anchor = f"{self.account}-{uuid.uuid4().hex[:6]}"
        uid = self.kube.core.create_namespaced_secret(self.ns, {"metadata": {"name": self.anchor}}).metadata.uid
        bound = {"apiVersion": "v1", "kind": "Secret", "name": self.anchor, "uid": uid}
        request = {"spec": {"audiences": [], "expirationSeconds": 600, "boundObjectRef": bound}}
        token = self.kube.core.create_namespaced_service_account_token(self.account, self.ns, request).status.token
        cluster = {"server": self.server, "certificate-authority": str(self.kube.api.configuration.ssl_ca_cert)}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": self.account, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": self.account}}],
            "current-context": "local",
        }
        self.path.write_text(yaml.safe_dump(config))

    def revoke(self) -> None:
        """The token stops working and the kubeconfig cannot be read: every call gets 401, logging in again fails."""
        self.kube.core.delete_namespaced_secret(self.anchor, self.ns)
        self.path.write_text("{not a kubeconfig")


@pytest.fixture
def revocable_login(election: Election, kube: Kube) -> Iterator[RevocableLogin]:
    account = "replica-a-identity"
    kube.core.create_namespaced_service_account(election.ns, {"metadata": {"name": account}})
    binding = f"{election.lease}-{account}"
    kube.rbac.create_cluster_role_binding(
        {
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": election.ns}],
        }
    )
    yield RevocableLogin(kube, election.ns, account, election.folder / "replica-a.kubeconfig")
    kube.rbac.delete_cluster_role_binding(binding)


def test_a_leader_whose_renewal_dies_stops_before_the_standby_takes_over(
    election: Election, revocable_login: RevocableLogin, kube: Kube, cluster: LocalCluster
) -> None:
    ns, lease = election.ns, election.lease
    leader = election.replica("replica-a", kubeconfig=revocable_login.kubeconfig)
    leader.process.start()
    eventually(lambda: holder(kube, ns, lease).startswith("replica-a_"), what="replica-a to lead")
    standby = election.replica("replica-b")
    standby.process.start()
    kube.create_run(run_manifest("run-0", ns, resources=SMALL))
    wait_phase(kube, ns, "run-0", "Running", timeout=120)

    # A rotated token and a kubeconfig that cannot be read at that moment: logging in again fails.
    revoke = time.monotonic()
    revocable_login.revoke()
    eventually(lambda: holder(kube, ns, lease).startswith("replica-b_"), timeout=60, what="the standby to lead")
    print(f"the standby led {time.monotonic() - revoke:.1f}s after the leader's login broke")
    revocable_login.restore()  # the leader could write again, if it still thought it led
    kube.create_run(run_manifest("run-late", ns, resources=SMALL))
    wait_phase(kube, ns, "run-late", "Running", timeout=120)
    drive_rayjob(kube, ns, "run-0", "Complete", "SUCCEEDED")
    wait_phase(kube, ns, "run-0", "Succeeded")

    acquired = min(e.received for e in _writes(cluster, standby, ns) if e.resource == "leases" and e.landed)
    late = [str(e) for e in _writes(cluster, leader, ns) if e.landed and e.received >= acquired]
    assert late == [], f"the deposed leader wrote after {acquired.isoformat()}"
    # The operator did not outlive its renewer: it ended (the pod restarts and stands by).
    eventually(lambda: leader.process.exit_code() is not None, timeout=30, what="the leader without a renewer to exit")
