"""What Loka costs on the whole pipeline: TrainingRuns through the operator, KubeRay and Kueue, next to the same
RayJobs applied straight to Kueue, and the operator's API load while runs sit Running.

    .venv/bin/python bench/reconcile.py [--sizes 1,100,500] [--idle-seconds 120] [--trainer-interval 60]

Needs the local control plane up (`make cluster-up`). Both halves share one Kueue ClusterQueue with room for every
run. For each N it:

1. starts `loka-operator` with its default settings (HTTPMode, scoped to `lokabench-*` namespaces),
2. applies N TrainingRuns (queue label, the shared ClusterQueue) and records, per run, the time from its create
   call returning to (a) its RayJob appearing and (b) the run reporting phase Running,
3. with every run Running, plays the trainers: each run's status.progress is patched once per
   `--trainer-interval` seconds (spread evenly), and counts the operator's API requests over `--idle-seconds`:
   requests per run per minute while runs sit Running,
4. reads the operator's peak RSS (VmHWM), stops it and deletes the namespace,
5. applies N plain RayJobs of the same shape (what the operator builds, queue label, same ClusterQueue) and
   times each to jobDeploymentStatus Running: the same pipeline without Loka,
6. prints p50/p95 latencies, totals, and the ratios Loka / plain (apply -> Running, p50 and total); with
   `--timeline`, each half's writes per run in order from the API server's audit log (`bench/timeline.py`);
   with `--repeat K`, K pairs of halves per N and the median of their p50 ratios (on two cores one half moves
   by 10-20 % from run to run).

Runs are head-only `engine: trl` runs (no GPUs, 50m CPU) so that 500 of them fit on the KWOK nodes.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from bench import timeline
from localcluster.controlplane import LocalCluster, wait_until
from localcluster.operator_process import OperatorProcess
from localcluster.procfs import cpu_seconds
from loka_api import TrainingRunSpec, kinds
from loka_api.crd import CRD_PATH, EVALUATION_CRD_PATH, REWARD_CYCLE_CRD_PATH
from loka_operator.builders import RayJobSettings, build_local_queue, build_rayjob, build_service_account

REPO = Path(__file__).resolve().parents[1]
PREFIX = "lokabench-"
QUEUE = "lokabench"
RUNS, RAY_JOBS = kinds.TRAINING_RUN, kinds.RAY_JOB
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"}

SPEC: dict[str, Any] = {
    "engine": "trl",
    "image": "ghcr.io/acme/loka:rl-train",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
    "resources": {"workers": 0, "gpusPerWorker": 0, "head": {"cpu": "50m", "memory": "64Mi"}},
}


class CpuAccount:
    """CPU seconds each control-plane component (and the operator) spends between `start()` and `stop()`."""

    def __init__(self, cluster: LocalCluster, extra: dict[str, int] | None = None) -> None:
        self._pids: dict[str, int | None] = {c.name: c.pid() for c in cluster.components()}
        self._pids.update(extra or {})
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self.spent: dict[str, float] = {}

    def stop(self) -> str:
        self.spent = {name: cpu_seconds(pid) - self._start[name] for name, pid in self._pids.items()}
        busiest = sorted(self.spent.items(), key=lambda item: -item[1])
        return "CPU s: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in busiest if seconds >= 0.1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def api_requests(operator: OperatorProcess) -> float:
    """The operator's API requests so far, from its own counter."""
    return sum(float(m) for m in re.findall(r"^loka_api_requests_total\{[^}]*\} (\S+)$", operator.metrics(), re.M))


class Watcher:
    """Records the first time each named object is seen, optionally only once `ready(obj)` holds."""

    def __init__(self, lister: Callable[..., Any], key: Callable[[dict[str, Any]], str | None]) -> None:
        self.seen: dict[str, float] = {}
        self._lister = lister
        self._key = key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Each 5-second watch resumes where the last one ended: starting over would make the API server replay every
        # object each time, a load that grows with N and with the number of watchers (the Loka half has two).
        version: str | None = None
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            resume = {"resource_version": version} if version else {}
            try:
                for event in stream.stream(self._lister, timeout_seconds=5, **resume):  # type: ignore[no-untyped-call]
                    obj: dict[str, Any] = event["object"]  # custom-object watches yield plain dicts
                    if event.get("type") == "ERROR":
                        version = None  # 410 Gone: the history is compacted; start over
                        break
                    version = obj["metadata"].get("resourceVersion") or version
                    name = self._key(obj)
                    if name is not None and name not in self.seen:
                        self.seen[name] = time.monotonic()
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    version = None
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def create_namespace(core: Any, tag: str) -> str:
    name = f"{PREFIX}{tag}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def delete_namespace(core: Any, name: str, timeout: float = 900) -> None:
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_until(gone, timeout=timeout, what=f"namespace {name} to be deleted", interval=1)


def create_all(count: int, create: Callable[[int], None]) -> dict[int, float]:
    """Create `count` objects with a few client threads; return each one's create-returned time."""
    created: dict[int, float] = {}

    def one(index: int) -> None:
        create(index)
        created[index] = time.monotonic()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(count)))
    return created


@contextmanager
def cluster_queue(custom: Any, n: int) -> Iterator[str]:
    """One ResourceFlavor and ClusterQueue with room for every run of both halves at once."""
    name = f"{PREFIX}cq-{uuid.uuid4().hex[:5]}"
    flavor = kinds.RESOURCE_FLAVOR
    custom.create_cluster_custom_object(
        *flavor.gvr, {"apiVersion": flavor.api_version, "kind": flavor.kind, "metadata": {"name": name}}
    )
    quota = [
        {"name": "cpu", "nominalQuota": str(max(10, n))},
        {"name": "memory", "nominalQuota": f"{max(10, n)}Gi"},
    ]
    body = {
        "apiVersion": kinds.CLUSTER_QUEUE.api_version,
        "kind": kinds.CLUSTER_QUEUE.kind,
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {"coveredResources": ["cpu", "memory"], "flavors": [{"name": name, "resources": quota}]}
            ],
        },
    }
    custom.create_cluster_custom_object(*kinds.CLUSTER_QUEUE.gvr, body)
    try:
        yield name
    finally:
        custom.delete_cluster_custom_object(*kinds.CLUSTER_QUEUE.gvr, name)
        custom.delete_cluster_custom_object(*flavor.gvr, name)


class Trainers:
    """Plays the trainers of N Running runs: each patches its run's progress once per `interval`, spread evenly."""

    def __init__(self, custom: Any, ns: str, names: list[str], interval: float) -> None:
        self.patches = 0
        self._custom, self._ns, self._names, self._interval = custom, ns, names, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        step = 0
        gap = self._interval / max(1, len(self._names))
        while not self._stop.is_set():
            step += 1
            for name in self._names:
                started = time.monotonic()
                patch = {"status": {"progress": {"step": step, "totalSteps": 1000}}}
                self._custom.patch_namespaced_custom_object_status(
                    RUNS.group, RUNS.version, self._ns, RUNS.plural, name, patch
                )
                self.patches += 1
                if self._stop.wait(max(0.0, gap - (time.monotonic() - started))):
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def bench_loka(cluster: LocalCluster, api: Any, n: int, queue: str, args: argparse.Namespace) -> dict[str, float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    operator = OperatorProcess(cluster, args.log, namespace_prefix=PREFIX, resync_seconds=None)
    operator.start()
    cpu = CpuAccount(cluster, {"loka-operator": operator.pid})
    ns = create_namespace(core, f"loka{n}")
    # Only the RayJobs' names: the plain half has no second watcher, and a full one would make the API server and
    # this process (on the same cores) carry every RayJob status update once more, charged to Loka's half.
    rayjobs = Watcher(
        lambda **kw: custom.list_namespaced_custom_object(
            RAY_JOBS.group, RAY_JOBS.version, ns, RAY_JOBS.plural, _headers=METADATA_ONLY, **kw
        ),
        lambda obj: obj["metadata"]["name"],
    )
    running = Watcher(
        lambda **kw: custom.list_namespaced_custom_object(RUNS.group, RUNS.version, ns, RUNS.plural, **kw),
        lambda obj: obj["metadata"]["name"] if (obj.get("status") or {}).get("phase") == "Running" else None,
    )
    started = time.monotonic()
    spec = {**SPEC, "queue": {"name": QUEUE, "clusterQueue": queue}}

    def create(index: int) -> None:
        body = {"apiVersion": RUNS.api_version, "kind": RUNS.kind, "metadata": {"name": f"run-{index}"}}
        custom.create_namespaced_custom_object(RUNS.group, RUNS.version, ns, RUNS.plural, {**body, "spec": spec})

    created = create_all(n, create)
    names = {f"run-{i}": t for i, t in created.items()}
    wait_until(lambda: len(rayjobs.seen) >= n, timeout=args.timeout, what=f"{n} RayJobs", interval=0.2)
    wait_until(lambda: len(running.seen) >= n, timeout=args.timeout, what=f"{n} runs Running", interval=0.5)
    print(f"loka  N={n} apply -> all Running, {cpu.stop()}", flush=True)
    rayjobs.stop()
    running.stop()
    to_rayjob = [rayjobs.seen[name] - t for name, t in names.items()]
    to_running = [running.seen[name] - t for name, t in names.items()]

    # Idle: every run Running, its trainer reporting progress now and then.
    trainers = Trainers(custom, ns, sorted(names), args.trainer_interval)
    before, idle_started = api_requests(operator), time.monotonic()
    time.sleep(args.idle_seconds)
    idle_requests, idle_minutes = api_requests(operator) - before, (time.monotonic() - idle_started) / 60
    trainers.stop()
    rss = operator.peak_rss_mb()
    operator.stop()
    if args.timeline:
        print(timeline.report(cluster.audit_log, ns), flush=True)
    delete_namespace(core, ns)
    return {
        "rayjob_p50": statistics.median(to_rayjob),
        "rayjob_p95": percentile(to_rayjob, 0.95),
        "running_p50": statistics.median(to_running),
        "running_p95": percentile(to_running, 0.95),
        "total_running": max(running.seen.values()) - started,
        "idle_rate": idle_requests / n / idle_minutes,
        "trainer_patches": trainers.patches,
        "rss_mb": rss,
    }


def bench_plain(cluster: LocalCluster, api: Any, n: int, queue: str, args: argparse.Namespace) -> dict[str, float]:
    """The same RayJobs applied straight to Kueue: apply -> jobDeploymentStatus Running."""
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    ns = create_namespace(core, f"plain{n}")
    spec = TrainingRunSpec.model_validate({**SPEC, "queue": {"name": QUEUE, "clusterQueue": queue}})
    assert spec.queue is not None
    local_queue = build_local_queue(spec.queue, ns)
    assert local_queue is not None
    queues = kinds.LOCAL_QUEUE
    custom.create_namespaced_custom_object(queues.group, queues.version, ns, queues.plural, local_queue)

    def identity(index: int) -> None:
        # The head pod runs as the run's ServiceAccount; a user applying plain RayJobs has it beforehand.
        account = build_service_account(f"run-{index}", ns, "none")
        del account["metadata"]["ownerReferences"]
        core.create_namespaced_service_account(ns, account)

    create_all(n, identity)
    running = Watcher(
        lambda **kw: custom.list_namespaced_custom_object(RAY_JOBS.group, RAY_JOBS.version, ns, RAY_JOBS.plural, **kw),
        lambda obj: (
            obj["metadata"]["name"] if (obj.get("status") or {}).get("jobDeploymentStatus") == "Running" else None
        ),
    )
    started = time.monotonic()
    cpu = CpuAccount(cluster)

    def create(index: int) -> None:
        body = build_rayjob(
            spec, run=f"run-{index}", namespace=ns, uid="none", settings=RayJobSettings(submission_mode="HTTPMode")
        )
        del body["metadata"]["ownerReferences"]  # plain RayJobs: nothing owns them
        custom.create_namespaced_custom_object(RAY_JOBS.group, RAY_JOBS.version, ns, RAY_JOBS.plural, body)

    created = create_all(n, create)
    wait_until(lambda: len(running.seen) >= n, timeout=args.timeout, what=f"{n} plain RayJobs Running", interval=0.5)
    print(f"plain N={n} apply -> all Running, {cpu.stop()}", flush=True)
    running.stop()
    latencies = [running.seen[f"run-{i}"] - t for i, t in created.items()]
    if args.timeline:
        print(timeline.report(cluster.audit_log, ns), flush=True)
    delete_namespace(core, ns)
    return {
        "running_p50": statistics.median(latencies),
        "running_p95": percentile(latencies, 0.95),
        "total_running": max(running.seen.values()) - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,500", help="comma-separated N values")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait per phase")
    parser.add_argument("--idle-seconds", type=float, default=120, help="window for the idle API-load figure")
    parser.add_argument("--trainer-interval", type=float, default=60, help="seconds between a run's progress patches")
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of halves per N (the ratio moves 10-20%% run to run on 2 cores)"
    )
    parser.add_argument(
        "--timeline", action="store_true", help="print each half's per-run write timeline from the audit log"
    )
    parser.add_argument("--log", type=Path, default=Path("/tmp/loka-bench-operator.log"), help="operator log file")
    args = parser.parse_args()

    cluster = LocalCluster(echo=lambda _line: None)
    if not cluster.is_up():
        print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
        return 2
    for crd in (CRD_PATH, EVALUATION_CRD_PATH, REWARD_CYCLE_CRD_PATH):  # the operator watches every kind
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / crd))
    api = cluster.api_client()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start: {load} ({os.cpu_count()} CPUs)")
    header = (
        f"{'N':>5} | {'RayJob p50':>10} {'p95':>7} | {'Running p50':>11} {'p95':>7} {'total':>7} | "
        f"{'idle req/run/min':>16} | {'RSS MB':>6} || {'plain p50':>9} {'p95':>7} {'total':>7} || "
        f"{'ratio p50':>9} {'total':>6}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        ratios: list[float] = []
        for _ in range(args.repeat):
            with cluster_queue(client.CustomObjectsApi(api), n) as queue:
                loka = bench_loka(cluster, api, n, queue, args)
                plain = bench_plain(cluster, api, n, queue, args)
            ratio_p50 = loka["running_p50"] / plain["running_p50"] if plain["running_p50"] > 0 else float("nan")
            ratio_total = loka["total_running"] / plain["total_running"] if plain["total_running"] > 0 else float("nan")
            ratios.append(ratio_p50)
            print(
                f"{n:>5} | {loka['rayjob_p50']:>9.3f}s {loka['rayjob_p95']:>6.2f}s | {loka['running_p50']:>10.2f}s "
                f"{loka['running_p95']:>6.2f}s {loka['total_running']:>6.1f}s | {loka['idle_rate']:>16.3f} | "
                f"{loka['rss_mb']:>6.0f} || {plain['running_p50']:>8.2f}s {plain['running_p95']:>6.2f}s "
                f"{plain['total_running']:>6.1f}s || {ratio_p50:>8.2f}x {ratio_total:>5.2f}x",
                flush=True,
            )
        if len(ratios) > 1:
            spread = ", ".join(f"{r:.2f}x" for r in ratios)
            print(f"{n:>5} | ratio p50, median of {len(ratios)} pairs: {statistics.median(ratios):.2f}x ({spread})")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at end: {load}")
    api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
