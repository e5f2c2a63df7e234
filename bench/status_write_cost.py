"""What one TrainingRun status write costs the API server, and which part of the CRD it goes to.

    .venv/bin/python bench/status_write_cost.py [--writes 200]

Needs the local control plane up. The same status merge patch (one condition's message changes) is written
`--writes` times to a TrainingRun under copies of its CRD (each in a group of its own), and to a ConfigMap of about
the same size; the API server's CPU seconds per write (from /proc) tell the variants apart:

- `full`: the CRD as shipped (structural schema, every CEL rule);
- `no-root-cel`: without the rules on the whole object (immutability and naming, which see status too);
- `no-cel`: without any CEL rule;
- `no-schema`: spec and status kept as given (x-kubernetes-preserve-unknown-fields), no rule at all;
- `configmap`: a ConfigMap holding the run's JSON in one key.

Rounds interleave the variants so that load from other processes on the machine spreads over all of them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client

from localcluster.controlplane import LocalCluster, wait_until
from localcluster.procfs import cpu_seconds
from loka_api import TrainingRunStatus
from loka_api.crd import CRD_PATH
from loka_operator.status import Observed, calculate_status

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "no-root-cel", "no-cel", "no-schema")
SPEC: dict[str, Any] = {
    "image": "ghcr.io/acme/loka:rl-train",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
    "resources": {"workers": 1, "gpusPerWorker": 8, "head": {"cpu": "1", "memory": "2Gi"}},
    "queue": {"name": "team-a", "clusterQueue": "gpu"},
}


def strip_rules(node: Any, *, root_only: bool) -> None:
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        if root_only:
            return
        for value in node.values():
            strip_rules(value, root_only=False)
    elif isinstance(node, list):
        for value in node:
            strip_rules(value, root_only=False)


def variant(name: str) -> dict[str, Any]:
    """The TrainingRun CRD in group `<name>.cost.loka.dev`, with what the variant leaves out taken out."""
    crd: dict[str, Any] = yaml.safe_load((REPO / CRD_PATH).read_text())
    group = f"{name}.cost.loka.dev"
    crd["metadata"] = {"name": f"{crd['spec']['names']['plural']}.{group}"}
    crd["spec"]["group"] = group
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    if name == "no-root-cel":
        strip_rules(schema, root_only=True)
    elif name == "no-cel":
        strip_rules(schema, root_only=False)
    elif name == "no-schema":
        keep = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema.pop("x-kubernetes-validations", None)
        schema["properties"] = {"spec": dict(keep), "status": dict(keep)}
    return crd


def running_status() -> dict[str, Any]:
    """What a Running run's status holds (the operator's calculation from an admitted, running RayJob)."""
    rayjob = {
        "metadata": {"name": "qwen", "uid": "u"},
        "spec": {"suspend": False},
        "status": {
            "jobDeploymentStatus": "Running",
            "jobStatus": "RUNNING",
            "jobId": "qwen-x7k2p",
            "rayClusterName": "qwen-raycluster-x7k2p",
            "dashboardURL": "qwen-raycluster-x7k2p-head-svc.team.svc.cluster.local:8265",
        },
    }
    admitted = {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}
    workload = {"metadata": {"name": "rayjob-qwen"}, "spec": {"active": True}, "status": {"conditions": [admitted]}}
    now = datetime.now(UTC).replace(microsecond=0)
    observed = Observed(generation=1, suspend=False, queued=True, now=now, rayjob=rayjob, workload=workload)
    status = calculate_status(observed, TrainingRunStatus()).status
    wire: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wire


class Targets:
    """The variants' CRDs, one run under each and a ConfigMap, in a namespace of their own."""

    def __init__(self, api: Any) -> None:
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.ext: Any = client.ApiextensionsV1Api(api)
        self.ns = f"lokabench-cost-{uuid.uuid4().hex[:5]}"
        self.crds = {name: variant(name) for name in VARIANTS}
        self.status = running_status()

    def gvr(self, name: str) -> tuple[str, str, str]:
        spec = self.crds[name]["spec"]
        return spec["group"], spec["versions"][0]["name"], spec["names"]["plural"]

    def install(self, cluster: LocalCluster) -> int:
        """Everything in place; the size of the object's JSON."""
        self.core.create_namespace({"metadata": {"name": self.ns}})
        for crd in self.crds.values():
            self.ext.create_custom_resource_definition(crd)
        cluster.wait_for_crds(*(crd["metadata"]["name"] for crd in self.crds.values()))
        for name in VARIANTS:
            group, version, plural = self.gvr(name)
            body = {"apiVersion": f"{group}/{version}", "kind": self.crds[name]["spec"]["names"]["kind"]}
            body |= {"metadata": {"name": "run-1"}, "spec": SPEC}
            wait_until(partial(self._created, name, body), timeout=30, what=f"{name} to accept objects")
            self.custom.patch_namespaced_custom_object_status(
                group, version, self.ns, plural, "run-1", {"status": self.status}
            )
        whole = json.dumps({"spec": SPEC, "status": self.status})
        self.core.create_namespaced_config_map(self.ns, {"metadata": {"name": "run-1"}, "data": {"run": whole}})
        return len(whole)

    def _created(self, name: str, body: dict[str, Any]) -> bool:
        try:
            group, version, plural = self.gvr(name)
            self.custom.create_namespaced_custom_object(group, version, self.ns, plural, body)
        except client.ApiException:
            return False  # the new group is not served yet
        return True

    def write(self, name: str, said: str) -> None:
        if name == "configmap":
            self.core.patch_namespaced_config_map("run-1", self.ns, {"data": {"said": said}})
            return
        conditions = copy.deepcopy(self.status["conditions"])
        conditions[-1]["message"] = said
        group, version, plural = self.gvr(name)
        patch = {"status": {"conditions": conditions}}
        self.custom.patch_namespaced_custom_object_status(group, version, self.ns, plural, "run-1", patch)

    def remove(self) -> None:
        self.core.delete_namespace(self.ns)
        for crd in self.crds.values():
            self.ext.delete_custom_resource_definition(crd["metadata"]["name"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    cluster = LocalCluster(echo=lambda _line: None)
    apiserver = next(c.pid() for c in cluster.components() if c.name == "kube-apiserver")
    targets = Targets(cluster.api_client())
    size = targets.install(cluster)
    spent: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    per_round = max(1, args.writes // args.rounds)
    for round_ in range(args.rounds):
        for name in [*VARIANTS, "configmap"]:
            cpu0, t0 = cpu_seconds(apiserver), time.monotonic()
            for i in range(per_round):
                targets.write(name, f"round {round_} write {i}")
            spent[name] += cpu_seconds(apiserver) - cpu0
            wall[name] += time.monotonic() - t0
    writes = per_round * args.rounds
    print(f"{writes} status writes each; the object's JSON is {size} bytes")
    print(f"{'variant':<12} {'apiserver CPU ms/write':>24} {'wall ms/write':>14}")
    for name in [*VARIANTS, "configmap"]:
        print(f"{name:<12} {1000 * spent[name] / writes:>24.2f} {1000 * wall[name] / writes:>14.2f}")
    targets.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
