"""How fast the operator turns TrainingRuns into RayJobs and Running runs, next to KubeRay alone.

    .venv/bin/python bench/reconcile.py [--sizes 1,100,500]

Needs the local control plane up (`make cluster-up`). For each N it:

1. starts `loka-operator` (HTTPMode, scoped to `lokabench-*` namespaces) in a fresh process,
2. creates N TrainingRuns in a fresh namespace and records, per run, the time from its create
   call returning to (a) its RayJob appearing and (b) the run reporting phase Running,
3. reads the operator's peak RSS (VmHWM) and its API request counter (requests per run),
4. deletes the namespace, then creates N plain RayJobs of the same shape (what the operator
   would build) and times KubeRay taking each to its RayCluster,
5. prints p50/p95 latencies, totals, and the ratio Loka total (create -> RayJob) / KubeRay total.

Runs are head-only `engine: trl` runs (no GPUs, 50m CPU) so that 500 of them fit on the KWOK nodes.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import LocalCluster, wait_until
from localcluster.operator_process import OperatorProcess
from loka_api import TrainingRunSpec
from loka_api.crd import CRD_PATH
from loka_operator.builders import RayJobSettings, build_rayjob

REPO = Path(__file__).resolve().parents[1]
PREFIX = "lokabench-"

SPEC: dict[str, Any] = {
    "engine": "trl",
    "image": "ghcr.io/acme/loka:rl-train",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
    "resources": {"workers": 0, "gpusPerWorker": 0, "head": {"cpu": "50m", "memory": "64Mi"}},
}


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
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(self._lister, timeout_seconds=5):  # type: ignore[no-untyped-call]
                    obj: dict[str, Any] = event["object"]  # custom-object watches yield plain dicts
                    name = self._key(obj)
                    if name is not None and name not in self.seen:
                        self.seen[name] = time.monotonic()
                    if self._stop.is_set():
                        break
            except ApiException:
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def create_namespace(core: Any, tag: str) -> str:
    name = f"{PREFIX}{tag}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def delete_namespace(core: Any, name: str, timeout: float = 600) -> None:
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


def bench_loka(cluster: LocalCluster, api: Any, n: int, log: Path, timeout: float) -> dict[str, float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    operator = OperatorProcess(cluster, log, namespace_prefix=PREFIX, resync_seconds=600)
    operator.start()
    ns = create_namespace(core, f"loka{n}")
    rayjobs = Watcher(
        lambda **kw: custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", **kw),
        lambda obj: obj["metadata"]["name"],
    )
    running = Watcher(
        lambda **kw: custom.list_namespaced_custom_object("loka.dev", "v1alpha1", ns, "trainingruns", **kw),
        lambda obj: obj["metadata"]["name"] if (obj.get("status") or {}).get("phase") == "Running" else None,
    )
    requests_before = api_requests(operator)
    started = time.monotonic()

    def create(index: int) -> None:
        body = {
            "apiVersion": "loka.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": f"run-{index}"},
            "spec": SPEC,
        }
        custom.create_namespaced_custom_object("loka.dev", "v1alpha1", ns, "trainingruns", body)

    created = create_all(n, create)
    names = {f"run-{i}": t for i, t in created.items()}
    wait_until(lambda: len(rayjobs.seen) >= n, timeout=timeout, what=f"{n} RayJobs", interval=0.2)
    wait_until(lambda: len(running.seen) >= n, timeout=timeout, what=f"{n} runs Running", interval=0.5)
    rayjobs.stop()
    running.stop()
    to_rayjob = [rayjobs.seen[name] - t for name, t in names.items()]
    to_running = [running.seen[name] - t for name, t in names.items()]
    requests = api_requests(operator) - requests_before
    rss = operator.peak_rss_mb()
    operator.stop()
    delete_namespace(core, ns)
    return {
        "rayjob_p50": statistics.median(to_rayjob),
        "rayjob_p95": percentile(to_rayjob, 0.95),
        "running_p50": statistics.median(to_running),
        "running_p95": percentile(to_running, 0.95),
        "total_rayjob": max(rayjobs.seen.values()) - started,
        "total_running": max(running.seen.values()) - started,
        "rss_mb": rss,
        "requests_per_run": requests / n,
    }


def bench_kuberay(api: Any, n: int, timeout: float) -> dict[str, float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = create_namespace(core, f"kuberay{n}")
    spec = TrainingRunSpec.model_validate(SPEC)
    clusters = Watcher(
        lambda **kw: custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", **kw),
        lambda obj: next(
            (ref["name"] for ref in obj["metadata"].get("ownerReferences", []) if ref.get("kind") == "RayJob"), None
        ),
    )
    started = time.monotonic()

    def create(index: int) -> None:
        body = build_rayjob(
            spec, run=f"job-{index}", namespace=ns, uid="none", settings=RayJobSettings(submission_mode="HTTPMode")
        )
        del body["metadata"]["ownerReferences"]  # plain RayJobs: nothing owns them
        custom.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", body)

    created = create_all(n, create)
    wait_until(lambda: len(clusters.seen) >= n, timeout=timeout, what=f"{n} RayClusters", interval=0.2)
    clusters.stop()
    latencies = [clusters.seen[f"job-{i}"] - t for i, t in created.items()]
    delete_namespace(core, ns)
    return {
        "cluster_p50": statistics.median(latencies),
        "cluster_p95": percentile(latencies, 0.95),
        "total_cluster": max(clusters.seen.values()) - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,500", help="comma-separated N values")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait per phase")
    parser.add_argument("--log", type=Path, default=Path("/tmp/loka-bench-operator.log"), help="operator log file")
    args = parser.parse_args()

    cluster = LocalCluster(echo=lambda _line: None)
    if not cluster.is_up():
        print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
        return 2
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / CRD_PATH))
    api = cluster.api_client()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    header = (
        f"{'N':>5} | {'RayJob p50':>10} {'p95':>7} | {'Running p50':>11} {'p95':>7} | {'total RJ':>8} "
        f"{'total Run':>9} | {'RSS MB':>6} | {'req/run':>7} || "
        f"{'KubeRay p50':>11} {'p95':>7} {'total':>7} | {'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        loka = bench_loka(cluster, api, n, args.log, args.timeout)
        ray = bench_kuberay(api, n, args.timeout)
        ratio = loka["total_rayjob"] / ray["total_cluster"] if ray["total_cluster"] > 0 else float("nan")
        print(
            f"{n:>5} | {loka['rayjob_p50']:>9.3f}s {loka['rayjob_p95']:>6.2f}s | {loka['running_p50']:>10.2f}s "
            f"{loka['running_p95']:>6.2f}s | {loka['total_rayjob']:>7.1f}s {loka['total_running']:>8.1f}s | "
            f"{loka['rss_mb']:>6.0f} | {loka['requests_per_run']:>7.1f} || {ray['cluster_p50']:>10.3f}s "
            f"{ray['cluster_p95']:>6.2f}s {ray['total_cluster']:>6.1f}s | {ratio:>5.2f}",
            flush=True,
        )
    api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
