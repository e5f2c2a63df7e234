"""What each of a run's writes costs the API server: its CPU per request, one kind of request at a time.

    .venv/bin/python bench/apiserver_cost.py [--requests 200] [--rounds 6] [--baseline-crd OLD.yaml]

Needs the local control plane up (`make cluster-up`) and no operator running. It creates `--requests` TrainingRuns in
a fresh namespace, then times the API server's CPU (from /proc) over batches of the requests a launch makes: the
run's status patches (nine conditions, as the operator writes them), the trainer's progress patches, and the
creates of the run's identity, isolation and token. Every status write makes the API server evaluate every CEL rule
of the TrainingRun CRD on the whole object, so the CRD is what the status patch figure measures.

With `--baseline-crd`, the status patches are timed under that TrainingRun CRD and under the one in crds/, round by
round in turn (the control plane drifts by 10-20 % over minutes), and the ratio printed; crds/ is applied again at
the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client

from bench.reconcile import SPEC, delete_namespace
from localcluster.controlplane import LocalCluster
from localcluster.procfs import cpu_seconds
from loka_api import kinds
from loka_api.crd import CRD_PATH
from loka_operator import builders

REPO = Path(__file__).resolve().parents[1]
RUNS = kinds.TRAINING_RUN
CONDITIONS = ("Valid", "SecretsReady", "Launched", "Admitted", "ClusterReady", "Training", "CheckpointSaved")


def status(round_: int) -> dict[str, Any]:
    """A status the size of the operator's: a phase, the attempt, conditions whose words change each round."""
    conditions = [
        {
            "type": kind,
            "status": "True" if round_ % 2 else "False",
            "reason": kind,
            "message": f"round {round_}: " + "words " * 12,
            "lastTransitionTime": "2026-12-07T00:00:00Z",
            "observedGeneration": 1,
        }
        for kind in CONDITIONS
    ]
    return {"phase": ("Queued", "Starting")[round_ % 2], "attempt": 1, "conditions": conditions}


class Bench:
    def __init__(self, cluster: LocalCluster, requests: int) -> None:
        self.cluster, self.requests = cluster, requests
        api = cluster.api_client()
        # Typed Any: the bodies are the operator's own manifests (plain dicts), not the client's model classes.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self.net: Any = client.NetworkingV1Api(api)
        self.pid = next(c.pid() for c in cluster.components() if c.name == "kube-apiserver")
        self.ns = f"apicost-{uuid.uuid4().hex[:5]}"
        self.round = 0

    def cpu_ms(self, each: Callable[[int], Any]) -> float:
        """The API server's CPU milliseconds per request over one batch (8 client threads, as a busy operator)."""
        before = cpu_seconds(self.pid)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(each, range(self.requests)))
        return 1000 * (cpu_seconds(self.pid) - before) / self.requests

    def create_runs(self) -> float:
        spec = {**SPEC, "queue": {"name": "q", "clusterQueue": "c"}}

        def create(i: int) -> None:
            body = {"apiVersion": RUNS.api_version, "kind": RUNS.kind, "metadata": {"name": f"run-{i}"}, "spec": spec}
            self.custom.create_namespaced_custom_object(RUNS.group, RUNS.version, self.ns, RUNS.plural, body)

        return self.cpu_ms(create)

    def status_patch(self) -> float:
        self.round += 1
        body = {"status": status(self.round)}
        return self.cpu_ms(
            lambda i: self.custom.patch_namespaced_custom_object_status(
                RUNS.group, RUNS.version, self.ns, RUNS.plural, f"run-{i}", body
            )
        )

    def progress_patch(self) -> float:
        self.round += 1
        body = {"status": {"progress": {"step": self.round, "totalSteps": 1000}}}
        return self.cpu_ms(
            lambda i: self.custom.patch_namespaced_custom_object_status(
                RUNS.group, RUNS.version, self.ns, RUNS.plural, f"run-{i}", body
            )
        )

    def children(self) -> dict[str, float]:
        ns = self.ns
        return {
            "create serviceaccount": self.cpu_ms(
                lambda i: self.core.create_namespaced_service_account(
                    ns, builders.build_service_account(f"run-{i}", ns, "u")
                )
            ),
            "create role": self.cpu_ms(
                lambda i: self.rbac.create_namespaced_role(ns, builders.build_role(f"run-{i}", ns, "u"))
            ),
            "create rolebinding": self.cpu_ms(
                lambda i: self.rbac.create_namespaced_role_binding(ns, builders.build_role_binding(f"run-{i}", ns, "u"))
            ),
            "create networkpolicy": self.cpu_ms(
                lambda i: self.net.create_namespaced_network_policy(
                    ns, builders.build_network_policy(f"run-{i}", ns, "u", kuberay_namespace="kuberay-system")
                )
            ),
            "create secret (Ray token)": self.cpu_ms(
                lambda i: self.core.create_namespaced_secret(
                    ns, builders.build_ray_auth_secret(f"run-{i}", ns, f"run-{i}", "u", builders.new_ray_token())
                )
            ),
        }


def apply_crd(cluster: LocalCluster, path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    time.sleep(3)  # the API server rebuilds the resource's storage and validators


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per batch (one per run)")
    parser.add_argument("--rounds", type=int, default=6, help="status-patch batches (per CRD with --baseline-crd)")
    parser.add_argument("--baseline-crd", type=Path, help="a TrainingRun CRD to compare crds/'s against")
    args = parser.parse_args()

    cluster = LocalCluster(echo=lambda _line: None)
    if not cluster.is_up():
        print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
        return 2
    current = REPO / CRD_PATH
    apply_crd(cluster, current)
    bench = Bench(cluster, args.requests)
    bench.core.create_namespace({"metadata": {"name": bench.ns}})
    try:
        print(f"API server CPU per request, batches of {args.requests} (ms)")
        print(f"  create trainingrun          {bench.create_runs():6.2f}")
        if args.baseline_crd is None:
            patches = [bench.status_patch() for _ in range(args.rounds)]
            print(f"  patch trainingruns/status   {statistics.median(patches):6.2f}  (median of {args.rounds})")
        else:
            timed: dict[str, list[float]] = {"baseline": [], "crds/": []}
            for _ in range(args.rounds):
                for label, crd in (("baseline", args.baseline_crd), ("crds/", current)):
                    apply_crd(cluster, crd)
                    timed[label].append(bench.status_patch())
            base, now = statistics.median(timed["baseline"]), statistics.median(timed["crds/"])
            print(f"  patch trainingruns/status   {now:6.2f}  crds/ (median of {args.rounds})")
            print(f"  patch trainingruns/status   {base:6.2f}  {args.baseline_crd} (median of {args.rounds})")
            print(f"  ratio crds/ / baseline      {now / base:6.2f}x")
        print(f"  patch progress (trainer)    {bench.progress_patch():6.2f}")
        for label, ms in bench.children().items():
            print(f"  {label:27s} {ms:6.2f}")
    finally:
        apply_crd(cluster, current)
        delete_namespace(bench.core, bench.ns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
