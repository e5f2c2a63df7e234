"""A side service a run brings (here an environment server: a Deployment and a Service) is one child registry entry
per kind with its builder: the reconciler creates it owned by the run, inside the run's network isolation, and puts
it back when it drifts.

The reconciler runs in this process against the real API server, with the registry plus the two entries below.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from localcluster.controlplane import LocalCluster
from loka_api import TrainingRun, kinds
from loka_operator import naming
from loka_operator.children import CHILDREN, ChildKind, Relation
from loka_operator.config import OperatorConfig
from loka_operator.credentials import login
from loka_operator.kube import JSON, KubeClient
from loka_operator.reconcile import Reconciler
from tests.operator.conftest import run_manifest
from tests.operator.kube import Kube

COMPONENT = "environment"
PORT = 8000


def environment_name(run: TrainingRun) -> str:
    return f"{run.metadata.name}-env"


def build_environment_server(run: TrainingRun, _config: OperatorConfig) -> list[JSON]:
    meta = run.metadata
    labels = naming.run_labels(meta.name, COMPONENT)
    container = {"name": "server", "image": "ghcr.io/acme/mcp-env:1", "ports": [{"containerPort": PORT}]}
    deployment = ENVIRONMENT.manifest(environment_name(run), run=meta.name, namespace=meta.namespace, uid=meta.uid)
    deployment["spec"] = {
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
    }
    return [deployment]


def build_environment_service(run: TrainingRun, _config: OperatorConfig) -> list[JSON]:
    meta = run.metadata
    service = ENVIRONMENT_SERVICE.manifest(environment_name(run), run=meta.name, namespace=meta.namespace, uid=meta.uid)
    service["spec"] = {
        "selector": naming.run_labels(meta.name, COMPONENT),
        "ports": [{"name": "mcp", "port": PORT, "targetPort": PORT}],
    }
    return [service]


ENVIRONMENT = ChildKind(
    kinds.DEPLOYMENT,
    Relation.OWNED,
    kept={"spec": ("replicas",), "status": None},
    verbs=frozenset({"get", "create", "patch"}),
    component=COMPONENT,
    repaired=("spec",),
    build=build_environment_server,
)
ENVIRONMENT_SERVICE = ChildKind(
    kinds.SERVICE,
    Relation.OWNED,
    kept={"spec": ("selector", "ports")},
    verbs=frozenset({"get", "create"}),
    component=COMPONENT,
    build=build_environment_service,
)


def reconcile(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]) -> None:
    """One reconcile of the run by a fresh reconciler (nothing cached: as after an operator restart)."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    async def once() -> None:
        client = KubeClient(login())
        try:
            reconciler = Reconciler(client, OperatorConfig(), registry=(*CHILDREN, ENVIRONMENT, ENVIRONMENT_SERVICE))
            reconciler.cache.observe(body)
            meta = body["metadata"]
            await reconciler.reconcile(meta["namespace"], meta["name"])
        finally:
            await client.close()

    asyncio.run(once())


def test_a_side_service_declared_once_is_created_owned_by_the_run_and_repaired(
    cluster: LocalCluster, kube: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Suspended: everything before the RayJob is made, and no Ray cluster starts.
    run = kube.create_run(run_manifest("envrun", namespace, suspend=True))
    reconcile(cluster, monkeypatch, run)

    apps: Any = client.AppsV1Api(kube.api)
    networking: Any = client.NetworkingV1Api(kube.api)
    deployment = apps.read_namespaced_deployment("envrun-env", namespace).to_dict()
    service = kube.core.read_namespaced_service("envrun-env", namespace).to_dict()
    owner_of_each = [child["metadata"]["owner_references"] for child in (deployment, service)]
    for (owner,) in owner_of_each:
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingRun", run["metadata"]["uid"], True)
    assert deployment["metadata"]["labels"][naming.LABEL_RUN] == service["metadata"]["labels"][naming.LABEL_RUN]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]

    # Reachable only from the run's pods: the run's NetworkPolicy selects the server's pods and admits only them.
    policy = networking.read_namespaced_network_policy(naming.network_policy_name("envrun"), namespace).to_dict()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["pod_selector"]["match_labels"].items() <= pod_labels.items()
    peers = [
        peer["pod_selector"] for rule in policy["spec"]["ingress"] for peer in rule["_from"] if peer["pod_selector"]
    ]
    assert [peer["match_labels"] for peer in peers] == [naming.run_pods_selector("envrun")["matchLabels"]]

    # Someone scales it away: the next reconcile puts the builder's spec back.
    apps.patch_namespaced_deployment("envrun-env", namespace, {"spec": {"replicas": 0}})
    reconcile(cluster, monkeypatch, kube.run(namespace, "envrun") or {})
    assert apps.read_namespaced_deployment("envrun-env", namespace).spec.replicas == 1
