"""An MCP environment server a run brings (spec.environment.servers[].run), through the real operator, Kueue and
KubeRay: a Deployment and a Service owned by the run (the child registry's entries), inside its NetworkPolicy, counted
in its Kueue Workload, serving while the run is admitted, put back when changed, gone with the run.

KWOK runs the pods and no traffic flows, so "reachable only from the run's pods" is asserted on the NetworkPolicy's
selectors, not on packets.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.operator_process import OperatorProcess
from loka_operator import naming
from tests.operator.conftest import eventually, queued, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "agent"
SERVER = "agent-env-board"
ENVIRONMENT = {
    "servers": [
        {"name": "board", "run": {"image": "ghcr.io/acme/board-env:1", "port": 8765, "replicas": 2,
                                  "resources": {"cpu": "3", "memory": "5Gi"}}},
    ]
}  # fmt: skip


def read(reader: Any, name: str, ns: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = reader(name, ns).to_dict()
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def test_an_environment_server_the_run_brings_is_its_child_counted_by_kueue_and_gone_with_it(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str
) -> None:
    apps: Any = client.AppsV1Api(kube.api)
    networking: Any = client.NetworkingV1Api(kube.api)
    run = kube.create_run(run_manifest(RUN, ns, environment=ENVIRONMENT, **queued(gpu_queue)))
    wait_phase(kube, ns, RUN, "Running")

    # Kueue counts the servers with the run: its one Workload holds a pod set of the server's shape and count.
    (workload,) = kube.workloads(ns)
    pod_sets = {p["name"]: p for p in workload["spec"]["podSets"]}
    board = pod_sets[naming.environment_quota_group("board")]
    assert board["count"] == 2
    (quota_container,) = board["template"]["spec"]["containers"]
    assert quota_container["resources"]["requests"] == {"cpu": "3", "memory": "5Gi"}
    assert {"head", naming.WORKER_GROUP} <= set(pod_sets)
    admitted = {p["name"]: p for p in workload["status"]["admission"]["podSetAssignments"]}
    assert admitted["env-board"]["resourceUsage"] == {"cpu": "6", "memory": "10Gi"}

    # Admitted: the Deployment serves with the spec's replicas; KubeRay starts no Ray pod for the quota group.
    def serving() -> dict[str, Any] | None:
        found = read(apps.read_namespaced_deployment, SERVER, ns)
        return found if found is not None and found["status"].get("ready_replicas") == 2 else None

    deployment = eventually(serving, what="the environment server's two pods to be ready")
    assert kube.pods(ns, "ray.io/group=env-board") == []
    assert len(kube.pods(ns, f"{naming.LABEL_ENV_SERVER}=board")) == 2

    service = read(kube.core.read_namespaced_service, SERVER, ns)
    assert service is not None
    for child in (deployment, service):
        (owner,) = child["metadata"]["owner_references"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("TrainingRun", RUN, run["metadata"]["uid"])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels
    assert service["spec"]["ports"][0]["port"] == 8765

    # Only the run's pods may reach it: the run's NetworkPolicy selects the server's pods and admits only the run's.
    policy = networking.read_namespaced_network_policy(naming.network_policy_name(RUN), ns).to_dict()
    assert policy["spec"]["pod_selector"]["match_labels"].items() <= pod_labels.items()
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["_from"] if peer["pod_selector"]]
    assert [peer["pod_selector"]["match_labels"] for peer in peers] == [{naming.LABEL_RUN: RUN}]

    # Changed by someone else (scaled away, pointed elsewhere): the operator puts the builder's spec back.
    apps.patch_namespaced_deployment(SERVER, ns, {"spec": {"replicas": 0}})
    kube.core.patch_namespaced_service(SERVER, ns, {"spec": {"selector": {naming.LABEL_RUN: "elsewhere"}}})
    eventually(
        lambda: (
            apps.read_namespaced_deployment(SERVER, ns).spec.replicas == 2
            and kube.core.read_namespaced_service(SERVER, ns).spec.selector == pod_labels
        ),
        what="the environment server's Deployment and Service to be put back",
    )

    # Gone with the run (garbage collection by the owner reference).
    kube.delete_run(ns, RUN)
    eventually(
        lambda: (
            read(apps.read_namespaced_deployment, SERVER, ns) is None
            and read(kube.core.read_namespaced_service, SERVER, ns) is None
            and read(networking.read_namespaced_network_policy, naming.network_policy_name(RUN), ns) is None
        ),
        what="the environment server's Deployment, Service and the NetworkPolicy to be collected with the run",
    )
