"""The MCP environment servers a run brings: a Deployment and a Service per image, and their quota in the RayJob."""

from __future__ import annotations

from typing import Any

from loka_api import TrainingRun
from loka_api.environments import server_url, service_name
from loka_operator import naming
from loka_operator.builders import build_network_policy
from loka_operator.builders.environment import build_environment_deployments, build_environment_services
from loka_operator.children import CHILDREN, ENVIRONMENT_SERVER, ENVIRONMENT_SERVICE
from loka_operator.config import OperatorConfig
from loka_operator.validation import validate_spec
from tests.unit.operator.test_builders import UID, make_spec, rayjob

ENVIRONMENT = {
    "servers": [
        {"name": "board", "run": {"image": "ghcr.io/acme/board-env:1", "port": 8765, "replicas": 3,
                                  "resources": {"cpu": "2", "memory": "4Gi"}, "args": ["--fast"]}},
        {"name": "hosted", "url": "http://env.envs.svc:8000/mcp"},
    ]
}  # fmt: skip
ADMITTED = {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": "2026-12-07T00:00:00Z"}


def run_with(status: dict[str, Any] | None = None, **spec: Any) -> TrainingRun:
    return TrainingRun.model_validate(
        {
            "apiVersion": "loka.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": "agent", "namespace": "team-a", "uid": UID, "generation": 1},
            "spec": make_spec(environment=ENVIRONMENT, **spec).model_dump(by_alias=True, exclude_none=True),
            "status": status or {},
        }
    )


def test_an_image_server_gets_a_deployment_and_a_service_owned_by_the_run_a_url_server_none() -> None:
    run = run_with({"conditions": [ADMITTED]})
    (deployment,) = build_environment_deployments(run, OperatorConfig())
    (service,) = build_environment_services(run, OperatorConfig())
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "agent-env-board"
    for child in (deployment, service):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("TrainingRun", "agent", UID, True)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"] == service["spec"]["selector"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/board-env:1"
    assert container["args"] == ["--fast"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 8765
    assert deployment["spec"]["replicas"] == 3


def test_the_trainer_reaches_the_server_at_its_services_cluster_address() -> None:
    run = run_with()
    (service,) = build_environment_services(run, OperatorConfig())
    board = run.spec.environment.servers[0]  # type: ignore[union-attr]
    assert server_url(board, run="agent", namespace="team-a") == (
        f"http://{service['metadata']['name']}.team-a.svc:8765/mcp"
    )


def test_only_the_runs_own_pods_reach_the_servers() -> None:
    (deployment,) = build_environment_deployments(run_with(), OperatorConfig())
    policy = build_network_policy("agent", "team-a", UID, kuberay_namespace="ray-system")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": naming.run_pods_selector("agent")}]


def test_the_servers_run_only_while_kueue_holds_their_quota() -> None:
    def replicas(run: TrainingRun) -> int:
        (deployment,) = build_environment_deployments(run, OperatorConfig())
        return int(deployment["spec"]["replicas"])

    assert replicas(run_with()) == 0, "queued, not admitted"
    assert replicas(run_with({"conditions": [ADMITTED]})) == 3
    assert replicas(run_with({"conditions": [ADMITTED]}, suspend=True)) == 0
    assert replicas(run_with({"phase": "Succeeded", "conditions": [ADMITTED]})) == 0
    assert replicas(run_with(queue=None)) == 3, "no queue: nothing to wait for"


def test_the_runs_kueue_workload_counts_the_servers_through_a_suspended_worker_group() -> None:
    spec = make_spec(environment=ENVIRONMENT)
    groups = {g["groupName"]: g for g in rayjob(spec)["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    quota = groups[naming.environment_quota_group("board")]
    assert quota["suspend"] is True, "KubeRay starts no pod for it: the Deployment's pods are the servers"
    assert quota["replicas"] == quota["minReplicas"] == quota["maxReplicas"] == 3
    (container,) = quota["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert set(groups) == {naming.WORKER_GROUP, "env-board"}, "a URL server brings nothing"
    unqueued = rayjob(make_spec(environment=ENVIRONMENT, queue=None))["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in unqueued] == [naming.WORKER_GROUP]


def test_a_queued_run_may_bring_no_more_servers_than_a_workload_has_pod_sets_for() -> None:
    servers = [{"name": f"s{i}", "run": {"image": "ghcr.io/acme/env:1"}} for i in range(6)]
    problem = validate_spec(make_spec(environment={"servers": servers}))
    assert problem is not None and problem.reason == "InvalidEnvironment"
    assert "6 given as run (an image)" in problem.message and "at most 5" in problem.message
    assert validate_spec(make_spec(environment={"servers": servers[:5]})) is None


def test_a_service_name_fits_63_characters_and_stays_distinct() -> None:
    run = "r" * 47
    names = {service_name(run, server) for server in ("a" * 20, "b" * 20)}
    assert all(len(name) <= 63 and name.endswith("-env-" + name[-20:]) for name in names)
    assert len(names) == 2
    assert service_name("agent", "board") == "agent-env-board"


def test_the_servers_are_children_declared_once() -> None:
    assert {ENVIRONMENT_SERVER, ENVIRONMENT_SERVICE} <= set(CHILDREN)
    assert ENVIRONMENT_SERVER.build is not None and ENVIRONMENT_SERVICE.build is not None
    assert ENVIRONMENT_SERVER.labels[naming.LABEL_COMPONENT] == naming.ENVIRONMENT_COMPONENT
