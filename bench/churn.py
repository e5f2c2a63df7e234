"""Churn: runs created, deleted and re-created under the same names in waves, against two operator replicas, with
one leader hand-over and one forced relist in the middle. What it prints is what a platform team would notice.

    .venv/bin/python bench/churn.py [--names 100] [--waves 10] [--idle-seconds 60]
    .venv/bin/python bench/churn.py --smoke          # 3 names, 2 waves: seconds, for a test

Needs the local control plane up (`make cluster-up`). In one fresh namespace it:

1. starts two `loka-operator` replicas competing for one Lease, each with its own API user (the audit log tells
   their writes apart);
2. runs `--waves` waves over `--names` run names: each wave creates every name (a new run, a new uid), waits for
   each to be Running, then deletes them all and the next wave re-creates them at once, while the previous runs'
   children are still being collected;
3. at the end of the wave before the middle one, deletes the runs while the leader is frozen (SIGSTOP) and
   compacts etcd with an API server restart (`LocalCluster.expire_watches`): the leader's watches resume from a
   revision that is gone, so it must list again and learn of the deletions it never saw; the next wave re-creates
   every name at once;
4. in the middle wave, stops the leader as a rolling update would (SIGTERM) while the wave's runs are launching,
   times the hand-over to the standby, and starts the stopped replica again as the new standby;
5. with the last wave Running and each run's trainer patching progress once a minute, counts the leader's API
   requests over `--idle-seconds`, and reads both replicas' RSS;
6. deletes every run, waits for the children to be collected, and prints:

   - duplicates created: children created twice for one run (from the audit log; aim 0)
   - created for a deleted run: children created after their run's deletion (aim 0)
   - ghosts left: runs the leader still counts in `loka_runs` after all were deleted (aim 0)
   - children left: objects with Loka's labels still in the namespace after the deadline (aim 0)
   - runs stuck: runs that did not reach Running within `--timeout` (aim 0)
   - leader hand-over: seconds from SIGTERM to the standby holding the Lease
   - idle API requests per run per minute (aim < 0.2), besides the leader's Lease renewals (a GET and a PUT per
     retry period, whatever the number of runs; counted from the audit log)
   - operator RSS per 1,000 runs cached: (leader RSS - standby RSS) / runs cached * 1000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bench.reconcile import SPEC, Trainers, api_requests, delete_namespace
from localcluster.controlplane import LocalCluster, wait_until
from localcluster.faults import AuditEvent, frozen
from localcluster.operator_process import OperatorProcess
from loka_api import kinds
from loka_api.crd import CRD_PATH

REPO = Path(__file__).resolve().parents[1]
PREFIX = "lokachurn-"
RUNS = kinds.TRAINING_RUN
# What the operator creates for a run (plural as the audit log names it).
CHILDREN = frozenset(
    k.plural
    for k in (kinds.SERVICE_ACCOUNT, kinds.ROLE, kinds.ROLE_BINDING, kinds.NETWORK_POLICY, kinds.RAY_JOB, kinds.SECRET)
)
# The leader-election timing of the replicas: the relist's freeze (deletes, then an API server restart: 15-25 s on a
# busy 2-core machine) must not cost the lead; the hand-over is a SIGTERM, which releases the Lease at once.
LEASE, DEADLINE, RETRY = 60.0, 45.0, 2.0


@dataclass
class Replica:
    name: str
    user: str
    process: OperatorProcess


@dataclass
class Figures:
    runs_created: int = 0
    stuck: int = 0
    handover_seconds: float = float("nan")
    idle_rate: float = float("nan")
    lease_rate: float = float("nan")
    runs_cached: float = 0.0
    leader_rss_mb: float = float("nan")
    standby_rss_mb: float = float("nan")
    ghosts: float = float("nan")
    children_left: int = -1
    duplicates: int = -1
    after_delete: int = -1
    wave_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rss_per_1000(self) -> float:
        return (self.leader_rss_mb - self.standby_rss_mb) / self.runs_cached * 1000 if self.runs_cached else 0.0


def rss_mb(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def metric(process: OperatorProcess, name: str) -> float:
    samples = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", process.metrics(), re.M)
    return sum(float(v) for v in samples)


def lease_holder(api: Any, ns: str, lease: str) -> str:
    try:
        found: Any = client.CoordinationV1Api(api).read_namespaced_lease(lease, ns)
    except ApiException:
        return ""
    return str(found.spec.holder_identity or "")


class Churn:
    def __init__(self, cluster: LocalCluster, api: Any, args: argparse.Namespace) -> None:
        self.cluster, self.api, self.args = cluster, api, args
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.ns = f"{PREFIX}{uuid.uuid4().hex[:5]}"  # the replicas watch PREFIX* only
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        self.lease = f"loka-churn-{uuid.uuid4().hex[:5]}"
        self.names = [f"run-{i}" for i in range(args.names)]
        self.replicas = [self._replica("replica-a"), self._replica("replica-b")]
        self.figures = Figures()
        self.started = datetime.now().astimezone()

    def _replica(self, name: str) -> Replica:
        user = f"loka-churn-{name}-{uuid.uuid4().hex[:4]}"
        kubeconfig = self.cluster.kubeconfig_for(user)
        election = (
            *("--leader-elect", "--leader-elect-namespace", self.ns, "--leader-elect-lease", self.lease),
            *("--leader-elect-lease-duration", str(LEASE), "--leader-elect-renew-deadline", str(DEADLINE)),
            *("--leader-elect-retry-period", str(RETRY)),
        )
        process = OperatorProcess(
            self.cluster,
            self.args.log_dir / f"{name}.log",
            namespace_prefix=PREFIX,
            resync_seconds=None,
            extra_args=election,
            env={"POD_NAME": name, "KUBECONFIG": str(kubeconfig)},
        )
        return Replica(name, user, process)

    # ----- helpers --------------------------------------------------------------------------------

    def leader(self) -> tuple[Replica, Replica]:
        """(the replica holding the Lease, the other one), waiting until one holds it."""
        holder = ""

        def held() -> bool:
            nonlocal holder
            holder = lease_holder(self.api, self.ns, self.lease)
            return any(holder.startswith(f"{r.name}_") and r.process.exit_code() is None for r in self.replicas)

        wait_until(held, timeout=120, what="a replica to hold the Lease", interval=0.2)
        first, second = self.replicas
        return (first, second) if holder.startswith(f"{first.name}_") else (second, first)

    def _parallel(self, work: Callable[[str], None], names: Iterable[str]) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(work, names))

    def create_all(self) -> dict[str, str]:
        """Create every name; return each new run's uid."""
        uids: dict[str, str] = {}

        def create(name: str) -> None:
            body = {"apiVersion": RUNS.api_version, "kind": RUNS.kind, "metadata": {"name": name}, "spec": SPEC}
            while True:
                try:
                    made = self.custom.create_namespaced_custom_object(
                        RUNS.group, RUNS.version, self.ns, RUNS.plural, body
                    )
                    uids[name] = made["metadata"]["uid"]
                    return
                except ApiException as error:
                    if error.status != 409:  # the previous run of this name is still being deleted
                        raise
                    time.sleep(0.2)

        self._parallel(create, self.names)
        self.figures.runs_created += len(uids)
        return uids

    def delete_all(self) -> None:
        def delete(name: str) -> None:
            try:
                self.custom.delete_namespaced_custom_object(RUNS.group, RUNS.version, self.ns, RUNS.plural, name)
            except ApiException as error:
                if error.status != 404:
                    raise

        self._parallel(delete, self.names)

    def runs(self) -> list[dict[str, Any]]:
        answer = self.custom.list_namespaced_custom_object(RUNS.group, RUNS.version, self.ns, RUNS.plural)
        items: list[dict[str, Any]] = answer["items"]
        return items

    def running(self, uids: dict[str, str]) -> set[str]:
        return {
            run["metadata"]["name"]
            for run in self.runs()
            if uids.get(run["metadata"]["name"]) == run["metadata"]["uid"]
            and (run.get("status") or {}).get("phase") == "Running"
        }

    def wait_running(self, uids: dict[str, str]) -> None:
        """Until every run of this wave is Running or the deadline passes; the ones that are not are stuck."""
        deadline = time.monotonic() + self.args.timeout
        done: set[str] = set()
        while time.monotonic() < deadline:
            done = self.running(uids)
            if len(done) == len(uids):
                return
            time.sleep(1)
        stuck = sorted(set(uids) - done)
        self.figures.stuck += len(stuck)
        self.figures.notes.append(f"stuck (not Running after {self.args.timeout:.0f}s): {', '.join(stuck[:10])}")

    # ----- the faults ------------------------------------------------------------------------------

    def hand_over(self) -> None:
        """A rolling update: the leader stops (SIGTERM, it releases the Lease); the standby takes over."""
        self.restart_exited("before the hand-over")
        leader, standby = self.leader()
        stopped = time.monotonic()
        leader.process.terminate()  # as the kubelet does: SIGTERM, and the pod's grace period runs
        wait_until(
            lambda: lease_holder(self.api, self.ns, self.lease).startswith(f"{standby.name}_"),
            timeout=2 * LEASE,
            what="the standby to take the Lease",
            interval=0.1,
        )
        self.figures.handover_seconds = time.monotonic() - stopped
        leader.process.stop()  # waits for it to end (SIGKILL after 30 s, the default grace period)
        exited, code = time.monotonic() - stopped, leader.process.exit_code()
        self.figures.notes.append(f"the stopped leader exited {exited:.1f}s after SIGTERM (code {code})")
        leader.process.start()  # the restarted pod stands by

    def delete_during_relist(self) -> None:
        """The leader is frozen while this wave's runs are deleted and the watch history is compacted away: its
        watches must list again and it never sees the DELETED events."""
        leader, _standby = self.leader()
        with frozen(leader.process.pid):
            self.delete_all()
            wait_until(lambda: not self.runs(), timeout=60, what="the runs to be deleted", interval=0.5)
            self.cluster.expire_watches()
        self.leader()  # the frozen leader renews, or it ends and the standby takes over
        self.restart_exited("after the freeze and relist")

    def restart_exited(self, when: str) -> None:
        """A replica that ended (it lost the lead) restarts, as its pod would; the report says so."""
        for replica in self.replicas:
            code = replica.process.exit_code()
            if code is not None:
                self.figures.notes.append(f"{replica.name} exited ({code}) {when}; restarted")
                replica.process.start()

    # ----- the benchmark ---------------------------------------------------------------------------

    def run(self) -> Figures:
        for replica in self.replicas:
            replica.process.start()
        self.leader()
        # The relist as the wave before the middle one is deleted, the hand-over while the middle one launches.
        middle = self.args.waves // 2
        relist = middle - 1 if middle >= 1 else None
        for wave in range(self.args.waves):
            self.restart_exited(f"before wave {wave + 1}")
            started = time.monotonic()
            uids = self.create_all()
            if wave == middle and not self.args.no_faults:
                self.hand_over()
            self.wait_running(uids)
            self.figures.wave_seconds.append(time.monotonic() - started)
            last = wave == self.args.waves - 1
            if last:
                self.idle(uids)
            elif wave == relist and not self.args.no_faults:
                self.delete_during_relist()
            else:
                self.delete_all()
            print(f"wave {wave + 1}/{self.args.waves}: {time.monotonic() - started:.1f}s", flush=True)
        self.delete_all()
        self.settle()
        self.audit()
        return self.figures

    def idle(self, uids: dict[str, str]) -> None:
        leader, standby = self.leader()
        trainers = Trainers(self.custom, self.ns, sorted(uids), self.args.trainer_interval)
        before, since, opened = api_requests(leader.process), time.monotonic(), datetime.now().astimezone()
        time.sleep(self.args.idle_seconds)
        requests, minutes = api_requests(leader.process) - before, (time.monotonic() - since) / 60
        trainers.stop()
        # The Lease costs the leader a GET and a PUT per retry period whatever the number of runs: not a per-run cost.
        renewals = [
            e
            for e in self.cluster.audit_log.events(user=leader.user)
            if e.resource == kinds.LEASE.plural and e.verb == "update" and e.received >= opened
        ]
        self.figures.lease_rate = 2 * len(renewals) / minutes
        self.figures.idle_rate = max(0.0, requests - 2 * len(renewals)) / max(1, len(uids)) / minutes
        self.figures.runs_cached = metric(leader.process, "loka_runs")
        self.figures.leader_rss_mb = rss_mb(leader.process.pid)
        self.figures.standby_rss_mb = rss_mb(standby.process.pid)

    def settle(self) -> None:
        """Every run deleted: wait for the children to go and the leader to count no run, then count what is left."""
        leader, _standby = self.leader()
        selector = "app.kubernetes.io/managed-by=loka-operator"

        def left() -> int:
            accounts = self.core.list_namespaced_service_account(self.ns, label_selector=selector).items
            rayjobs = self.custom.list_namespaced_custom_object(
                kinds.RAY_JOB.group, kinds.RAY_JOB.version, self.ns, kinds.RAY_JOB.plural
            )["items"]
            return len(accounts) + len(rayjobs)

        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline and (left() or metric(leader.process, "loka_runs")):
            time.sleep(1)
        self.figures.children_left = left()
        self.figures.ghosts = metric(leader.process, "loka_runs")

    def audit(self) -> None:
        """Children created twice for one run, or after their run was deleted, from the API server's audit log."""
        users = {r.user for r in self.replicas}
        events = [e for e in self.cluster.audit_log.events() if e.namespace == self.ns and e.received >= self.started]
        self.figures.duplicates, self.figures.after_delete = duplicates(events, users)

    def close(self) -> None:
        for replica in self.replicas:
            replica.process.stop()
        delete_namespace(self.core, self.ns)


def duplicates(events: list[AuditEvent], operators: set[str]) -> tuple[int, int]:
    """(children created more than once within one run's life, children created while no run of that name existed).

    A run's life is from its create to its delete (both landed), per name; children are matched to their run by
    name (run `run-3`: `run-3`, `loka-run-run-3`, `loka-run-run-3-ray-token`).
    """
    lives: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e.received):
        if event.resource != RUNS.plural or not event.landed:
            continue
        if event.verb == "create":
            lives[event.name].append((event.received, None))
        elif event.verb == "delete" and lives[event.name] and lives[event.name][-1][1] is None:
            lives[event.name][-1] = (lives[event.name][-1][0], event.received)
    created: dict[tuple[str, int, str, str], int] = defaultdict(int)
    orphaned = 0
    for event in events:
        if event.user not in operators or event.verb != "create" or event.resource not in CHILDREN:
            continue
        if not event.landed:
            continue
        run = re.sub(r"^loka-run-|-ray-token$", "", event.name)
        life = next(
            (
                i
                for i, (born, died) in enumerate(lives.get(run, []))
                if born <= event.received and (died is None or event.received <= died)
            ),
            None,
        )
        if life is None:
            orphaned += 1
        else:
            created[(run, life, event.resource, event.name)] += 1
    return sum(count - 1 for count in created.values() if count > 1), orphaned


def report(figures: Figures, args: argparse.Namespace) -> str:
    waves = " ".join(f"{s:.0f}" for s in figures.wave_seconds)
    lines = [
        f"runs created              {figures.runs_created} ({args.names} names x {args.waves} waves)",
        f"wave seconds              {waves}",
        f"duplicates created        {figures.duplicates}",
        f"created for a deleted run {figures.after_delete}",
        f"ghosts left               {figures.ghosts:.0f}",
        f"children left             {figures.children_left}",
        f"runs stuck                {figures.stuck}",
        f"leader hand-over          {figures.handover_seconds:.1f}s",
        f"idle req/run/min          {figures.idle_rate:.3f} (besides the Lease's {figures.lease_rate:.0f} req/min)",
        f"RSS per 1,000 runs cached {figures.rss_per_1000:.0f} MB (leader {figures.leader_rss_mb:.0f} MB, "
        f"standby {figures.standby_rss_mb:.0f} MB, {figures.runs_cached:.0f} runs cached)",
        *figures.notes,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=100, help="run names; each wave creates every one")
    parser.add_argument("--waves", type=int, default=10, help="waves of create, Running, delete")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take to be Running")
    parser.add_argument("--idle-seconds", type=float, default=60, help="window for the idle API-load figure")
    parser.add_argument("--trainer-interval", type=float, default=60, help="seconds between a run's progress patches")
    parser.add_argument("--no-faults", action="store_true", help="no hand-over and no forced relist")
    parser.add_argument("--smoke", action="store_true", help="3 names, 2 waves, 5 idle seconds: a quick check")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/loka-churn"), help="the replicas' logs")
    args = parser.parse_args()
    if args.smoke:
        args.names, args.waves, args.idle_seconds, args.timeout = 3, 2, 5.0, 120.0
    args.log_dir.mkdir(parents=True, exist_ok=True)

    cluster = LocalCluster(echo=lambda _line: None)
    if not cluster.is_up():
        print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
        return 2
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / CRD_PATH))
    api = cluster.api_client()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start: {load} ({os.cpu_count()} CPUs)", flush=True)
    churn = Churn(cluster, api, args)
    try:
        figures = churn.run()
    finally:
        churn.close()
    print(report(figures, args))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at end: {load}")
    api.close()
    bad = figures.duplicates or figures.after_delete or figures.ghosts or figures.stuck or figures.children_left
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
