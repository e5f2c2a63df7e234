"""The operator under test, run as a subprocess against the local control plane.

It only watches namespaces named `lokaop-<session>-*`, so other operators and test sessions on the
same cluster never see or touch its runs (and it never touches theirs).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import LocalCluster, wait_until
from localcluster.operator_process import OperatorProcess
from loka_api import kinds
from loka_api.admission import policy_manifests
from loka_api.crd import CRD_PATH, EVALUATION_CRD_PATH, REWARD_CYCLE_CRD_PATH
from tests.operator.kube import Kube

REPO = Path(__file__).resolve().parents[2]
# One prefix per test session: concurrent sessions each run their own operator.
NAMESPACE_PREFIX = f"lokaop-{uuid.uuid4().hex[:4]}-"


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> None:
    """The CRD and what the chart installs beside it: the policy on the trainer's status writes."""
    for path in (CRD_PATH, EVALUATION_CRD_PATH, REWARD_CYCLE_CRD_PATH):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / path))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/trainingruns.loka.dev",
        "crd/evaluations.loka.dev",
        "crd/rewardcycles.loka.dev",
    )
    apply_trainer_status_policy(cluster)


def apply_trainer_status_policy(cluster: LocalCluster) -> None:
    policy = yaml.safe_dump_all(policy_manifests())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=policy)


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster, crd: None) -> Iterator[Kube]:
    api = cluster.api_client()
    yield Kube(api)
    api.close()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator") / "loka-operator.log"
    process = OperatorProcess(cluster, log_path, namespace_prefix=NAMESPACE_PREFIX)
    process.start()
    yield process
    process.stop()


# Not matched by the session operator's `<prefix>*`: the K8sJobMode operator has these namespaces to itself.
K8S_JOB_PREFIX = NAMESPACE_PREFIX.rstrip("-") + "k-"


@pytest.fixture(scope="session")
def k8s_job_operator(
    cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator in KubeRay's default submission mode (a submitter Job), for namespaces from `k8s_ns`."""
    log_path = tmp_path_factory.mktemp("operator-k8sjob") / "loka-operator.log"
    process = OperatorProcess(cluster, log_path, submission_mode="K8sJobMode", namespace_prefix=K8S_JOB_PREFIX)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def k8s_ns(kube: Kube) -> Iterator[str]:
    yield from fresh_namespace(kube, K8S_JOB_PREFIX)


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    """A fresh namespace watched by this session's operator, deleted afterwards."""
    yield from fresh_namespace(kube, NAMESPACE_PREFIX)


def fresh_namespace(kube: Kube, prefix: str, labels: dict[str, str] | None = None) -> Iterator[str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"loka.dev/test": "operator", **(labels or {})}}})
    wait_until(lambda: kube.exists(*kinds.SERVICE_ACCOUNT.gvr, name, "default"), timeout=30, what="default SA")
    yield name
    kube.core.delete_namespace(name)


@pytest.fixture
def gpu_queue(kube: Kube) -> Iterator[str]:
    """A Kueue ClusterQueue with room for exactly one 8-GPU worker; returns its name."""
    yield from _gpu_queue(kube, preemption=None)


@pytest.fixture
def preempting_gpu_queue(kube: Kube) -> Iterator[str]:
    """Like gpu_queue, but a higher-priority workload preempts a lower one inside the queue."""
    yield from _gpu_queue(kube, preemption={"withinClusterQueue": "LowerPriority"})


@pytest.fixture
def priorities(kube: Kube) -> Iterator[tuple[str, str]]:
    """Two Kueue WorkloadPriorityClasses: (low, high)."""
    tag = uuid.uuid4().hex[:6]
    names = (f"lokaop-low-{tag}", f"lokaop-high-{tag}")
    for name, value in zip(names, (100, 1000), strict=True):
        kube.create_cluster_object(kinds.WORKLOAD_PRIORITY_CLASS, {"metadata": {"name": name}, "value": value})
    yield names
    for name in names:
        kube.delete_cluster_object(kinds.WORKLOAD_PRIORITY_CLASS, name)


def _gpu_queue(kube: Kube, *, preemption: dict[str, str] | None) -> Iterator[str]:
    name = f"lokaop-cq-{uuid.uuid4().hex[:6]}"
    flavor = f"{name}-flavor"
    kube.create_cluster_object(kinds.RESOURCE_FLAVOR, {"metadata": {"name": flavor}})
    resources = [
        {"name": "cpu", "nominalQuota": "1000"},
        {"name": "memory", "nominalQuota": "10Ti"},
        {"name": "nvidia.com/gpu", "nominalQuota": "8"},
    ]
    kube.create_cluster_object(
        kinds.CLUSTER_QUEUE,
        {
            "metadata": {"name": name},
            "spec": {
                **({"preemption": preemption} if preemption else {}),
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [{"name": flavor, "resources": resources}],
                    }
                ],
            },
        },
    )
    yield name
    kube.delete_cluster_object(kinds.CLUSTER_QUEUE, name)
    kube.delete_cluster_object(kinds.RESOURCE_FLAVOR, flavor)


def run_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
        "training": {"batchSize": 16, "samplesPerPrompt": 4},
        "resources": {
            "workers": 1,
            "gpusPerWorker": 8,
            "head": {"cpu": "1", "memory": "2Gi"},
            "worker": {"cpu": "4", "memory": "8Gi"},
        },
        "checkpoints": {"uri": "s3://loka/checkpoints", "every": 10, "keep": 2},
    }
    body.update(spec)
    return {
        "apiVersion": kinds.TRAINING_RUN.api_version,
        "kind": kinds.TRAINING_RUN.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def queued(cluster_queue: str, name: str = "team-a") -> dict[str, Any]:
    return {"queue": {"name": name, "clusterQueue": cluster_queue}}


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    status: dict[str, Any] = eventually(
        lambda: (s := kube.status(ns, name)).get("phase") == phase and s,
        timeout=timeout,
        what=f"run {ns}/{name} to be {phase} (now {kube.phase(ns, name)})",
    )
    return status


def wait_condition(kube: Kube, ns: str, name: str, type_: str, status: str, *, reason: str = "") -> dict[str, Any]:
    """The run's condition once it has `status` (and a reason starting with `reason`)."""
    found: dict[str, Any] = eventually(
        lambda: (
            (c := kube.condition(ns, name, type_)).get("status") == status
            and str(c.get("reason", "")).startswith(reason)
            and c
        ),
        what=f"{type_}={status} {reason} on {ns}/{name} (now {kube.condition(ns, name, type_)})",
    )
    return found


def drive_rayjob(kube: Kube, ns: str, name: str, deployment: str, job_status: str, *, message: str = "") -> None:
    """Stand in for the Ray job's end, as Kueue's own RayJob integration tests do: write the RayJob status."""
    said = message or f"driven to {job_status}"
    status = {"jobDeploymentStatus": deployment, "jobStatus": job_status, "message": said}
    rayjobs = kinds.RAY_JOB
    kube.custom.patch_namespaced_custom_object_status(
        rayjobs.group, rayjobs.version, ns, rayjobs.plural, name, {"status": status}
    )


def metric(operator: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples on the operator's /metrics page (0 when it has none yet)."""
    samples = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", operator.metrics(), re.M)
    return sum(float(v) for v in samples)


def eventually(predicate: Any, *, timeout: float = 60, what: str, interval: float = 0.3) -> Any:
    """Poll until `predicate()` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
