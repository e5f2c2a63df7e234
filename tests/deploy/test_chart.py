"""The loka-operator chart, rendered with real helm for several value sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.tools import REPO
from loka_operator.main import config_from, parse_args
from tests.deploy.chart import CHART, OPENSHIFT_APIS, VALUE_SETS, ChartError, Rendered, helm, render
from tests.deploy.operator_api import required_verbs
from tests.deploy.podsecurity import pod_specs, restricted_violations

VALUE_FILES = sorted(VALUE_SETS.glob("*-values.yaml"))
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ConsoleYAMLSample", "CustomResourceDefinition"}


def _values_id(path: Path | None) -> str:
    return "default" if path is None else path.stem


@pytest.mark.parametrize("values", [None, *VALUE_FILES], ids=_values_id)
def test_chart_lints_strictly(values: Path | None) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART]
    if values is not None:
        args += ["--values", values]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [None, *VALUE_FILES], ids=_values_id)
def test_operator_pod_passes_restricted_v2(values: Path | None) -> None:
    rendered = render(values=values, api_versions=OPENSHIFT_APIS)
    (deployment,) = rendered.of_kind("Deployment")
    for where, spec in pod_specs(deployment):
        assert restricted_violations(spec, where) == []


def test_operator_runs_two_replicas_that_elect_a_leader_and_roll_over() -> None:
    deployment = render().one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--leader-elect" in container["args"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"


def test_one_replica_without_leader_election_is_replaced_not_rolled() -> None:
    deployment = render(sets={"replicas": "1", "leaderElection.enabled": "false"}).one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_liveness_probe_hits_the_endpoint_the_operator_serves() -> None:
    container = render(sets={"liveness.port": "9191", "liveness.path": "/alive"}).one("Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe == {"path": "/alive", "port": "health"}
    assert ports["health"] == 9191
    assert "--liveness=http://0.0.0.0:9191/alive" in container["args"]


def test_metrics_service_reaches_the_operator_metrics_port() -> None:
    rendered = render(sets={"metrics.port": "9400"})
    service = rendered.one("Service")
    pod = rendered.one("Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9400, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert "--metrics-port=9400" in container["args"]


def test_metrics_disabled_renders_no_service_and_no_monitor() -> None:
    rendered = render(values=VALUE_SETS / "no-metrics-values.yaml", api_versions=OPENSHIFT_APIS)
    assert "Service" not in rendered.kinds()
    assert "ServiceMonitor" not in rendered.kinds()
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert "--metrics-port=0" in container["args"]


def test_service_monitor_is_rendered_only_when_the_cluster_serves_it() -> None:
    assert "ServiceMonitor" not in render().kinds()
    rendered = render(api_versions=("monitoring.coreos.com/v1/ServiceMonitor",))
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def _leader_election(kind: str, rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.of_kind(kind) if o["metadata"]["name"].endswith("-leader-election")]


def test_default_install_watches_its_own_namespace_with_a_role_there_and_nothing_cluster_scoped() -> None:
    rendered = render(namespace="loka-system")
    assert not rendered.kinds() & CLUSTER_SCOPED
    election = _leader_election("Role", rendered) + _leader_election("RoleBinding", rendered)
    (role,) = [r for r in rendered.of_kind("Role") if r not in election]
    (binding,) = [b for b in rendered.of_kind("RoleBinding") if b not in election]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "loka-system"
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=loka-system"]


def test_cluster_mode_binds_one_cluster_role_and_watches_all_namespaces() -> None:
    rendered = render(values=VALUE_SETS / "cluster-values.yaml")
    # The only namespaced Role: the Lease in the release namespace.
    assert rendered.of_kind("Role") == _leader_election("Role", rendered)
    binding = rendered.one("ClusterRoleBinding")
    sa = rendered.one("ServiceAccount")
    assert binding["roleRef"]["name"] == rendered.one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "loka-system"}
    ]
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")]


def test_namespaced_mode_renders_roles_only_in_each_watched_namespace() -> None:
    rendered = render(values=VALUE_SETS / "namespaced-values.yaml")
    assert not rendered.kinds() & CLUSTER_SCOPED
    election = _leader_election("Role", rendered) + _leader_election("RoleBinding", rendered)
    assert {o["metadata"]["namespace"] for o in election} == {"loka-system"}
    roles = {r["metadata"]["namespace"] for r in rendered.of_kind("Role") if r not in election}
    bindings = {b["metadata"]["namespace"]: b for b in rendered.of_kind("RoleBinding") if b not in election}
    assert roles == set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["subjects"][0]["namespace"] == "loka-system"
    args = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def _verbs(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


@pytest.mark.parametrize("values", [None, *VALUE_FILES], ids=_values_id)
def test_rbac_grants_exactly_the_verbs_the_operator_code_uses(values: Path | None) -> None:
    rendered = render(values=values)
    roles = rendered.of_kind("ClusterRole") + rendered.of_kind("Role")
    own = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    watched = [r for r in roles if r not in own]
    assert watched
    needed = required_verbs()
    for role in watched:
        assert _verbs(role["rules"]) == needed
    # The Lease lives in the release namespace, whatever the operator watches.
    assert [r["metadata"]["namespace"] for r in own] == ["loka-system"]
    assert _verbs(own[0]["rules"]) == required_verbs(own_namespace=True)


def test_operator_needs_no_secret_listing_and_no_cluster_powers() -> None:
    needed = required_verbs()
    # get: key names of a Secret a run names; create: the run's Ray token. Never list or watch.
    assert needed[("", "secrets")] == {"get", "create"}
    assert ("", "namespaces") not in needed
    assert ("", "pods") not in needed
    assert not any(v & {"bind", "escalate", "impersonate", "*"} for v in needed.values())


@pytest.mark.parametrize("values", [None, *VALUE_FILES], ids=_values_id)
def test_operator_accepts_the_arguments_and_environment_the_chart_gives_it(
    values: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(values=values)
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = parse_args(container["args"])
    chart_values = yaml.safe_load(values.read_text()) if values is not None else {}
    cluster_scope = chart_values.get("scope") == "cluster"
    assert args.namespace == ([] if cluster_scope else chart_values.get("watchNamespaces") or ["loka-system"])
    downward = {"metadata.name": "loka-operator-7d9f-x2", "metadata.namespace": "loka-system"}
    for env in container["env"]:
        # A plain value may be empty (workDisk.storageClass: "" = the cluster's default StorageClass).
        value = env["value"] if "value" in env else downward[env["valueFrom"]["fieldRef"]["fieldPath"]]
        monkeypatch.setenv(env["name"], value)
    config = config_from(args)
    expected_mode = chart_values.get("operator", {}).get("rayJobSubmissionMode", "K8sJobMode")
    assert config.rayjob.submission_mode == expected_mode
    assert config.rayjob.ray_version == chart_values.get("operator", {}).get("rayVersion", "2.60.0")
    assert config.kuberay_namespace == chart_values.get("kuberay", {}).get("namespace", "default")
    assert config.leader_election is not None
    assert config.leader_election.namespace == "loka-system"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports.get("metrics", 0)
    assert args.liveness.endswith(f":{ports['health']}{container['livenessProbe']['httpGet']['path']}")


@pytest.mark.parametrize(
    ("sets", "field", "accepted"),
    [
        ({"watchNamespaces[0]": "Team_A"}, "watchNamespaces", "does not match pattern"),
        ({"scope": "cluster", "watchNamespaces[0]": "team-a"}, "watchNamespaces", "maxItems"),
        ({"scope": "global"}, "scope", "namespaced"),
        ({"operator.rayVersion": "latest"}, "rayVersion", "does not match pattern"),
        ({"kuberay.namespace": "Ray_System"}, "kuberay", "does not match pattern"),
        ({"operator.rayJobSubmissionMode": "Magic"}, "rayJobSubmissionMode", "K8sJobMode"),
        ({"metrics.port": "70000"}, "/metrics/port", "want 65,535"),
        ({"replicas": "0"}, "replicas", "minimum"),
        ({"replicas": "2", "leaderElection.enabled": "false"}, "replicas > 1", "leaderElection.enabled=true"),
        ({"liveness.path": "healthz"}, "liveness", "does not match pattern"),
    ],
)
def test_bad_values_are_refused_naming_the_field(sets: dict[str, str], field: str, accepted: str) -> None:
    with pytest.raises(ChartError) as refused:
        render(sets=sets)
    message = str(refused.value)
    assert field in message
    assert accepted.lower() in message.lower()


def test_console_sample_is_rendered_only_on_openshift() -> None:
    assert "ConsoleYAMLSample" not in render().kinds()
    sample = render(values=VALUE_SETS / "openshift-values.yaml", api_versions=OPENSHIFT_APIS).one("ConsoleYAMLSample")
    assert sample["spec"]["targetResource"] == {"apiVersion": "loka.dev/v1alpha1", "kind": "TrainingRun"}
    run = yaml.safe_load(sample["spec"]["yaml"])
    assert run["kind"] == "TrainingRun"
    assert run["spec"]["queue"]["name"]


def _generated_crds() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((REPO / "crds").glob("*.yaml"))}


def test_chart_carries_the_generated_crd_unchanged() -> None:
    generated = _generated_crds()
    assert generated, "crds/ holds no generated CRD yet"
    carried = {p.name: p.read_text() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert carried == generated, "charts/loka-operator/crds/ differs from crds/: run `make chart-crds`"


def test_crd_installs_with_the_chart() -> None:
    rendered: Rendered = render(include_crds=True)
    crds = {c["metadata"]["name"]: c for c in rendered.of_kind("CustomResourceDefinition")}
    assert set(crds) == {"trainingruns.loka.dev", "evaluations.loka.dev", "rewardcycles.loka.dev"}
    crd = crds["trainingruns.loka.dev"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
