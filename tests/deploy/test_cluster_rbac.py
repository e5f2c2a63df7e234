"""The chart installed into the real control plane: its ServiceAccount can do what the operator
does and nothing more, and the pods it runs are admitted under the `restricted` Pod Security level.

Every call below is made by the API server's real RBAC and admission, impersonating the chart's
ServiceAccount (kubectl --as).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster.controlplane import wait_until
from localcluster.tools import REPO
from loka_api import TrainingRunSpec
from loka_operator.builders.localqueue import build_local_queue
from loka_operator.builders.rayjob import RayJobSettings, build_rayjob
from loka_operator.builders.rbac import build_role, build_role_binding, build_service_account
from tests.deploy.install import Install, apply, get_json, installed_chart
from tests.deploy.podsecurity import restricted_violations

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
SAMPLE = yaml.safe_load((REPO / "gitops" / "base" / "runs" / "qwen-gsm8k.yaml").read_text())


@pytest.fixture
def team(cluster: Any, namespace: str) -> Iterator[str]:
    """A second namespace the operator watches, enforcing the `restricted` Pod Security level."""
    name = f"{namespace[:50]}-team"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, RESTRICTED)
    wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespaced(cluster: Any, namespace: str, team: str) -> Iterator[Install]:
    cluster.kubectl("label", "namespace", namespace, RESTRICTED)
    with installed_chart(cluster, namespace, {"watchNamespaces[0]": team}) as install:
        yield install


def _must(done: Any) -> None:
    assert done.returncode == 0, done.stderr


def _forbidden(done: Any) -> None:
    assert done.returncode != 0
    assert "forbidden" in done.stderr.lower(), done.stderr


def _create_run(cluster: Any, team: str) -> Any:
    run = json.loads(json.dumps(SAMPLE))
    run["metadata"]["namespace"] = team
    # Kueue makes no Workload for a RayJob whose WorkloadPriorityClass does not exist (cluster-scoped, not ours).
    del run["spec"]["queue"]["priorityClass"]
    _must(apply(cluster, [run]))
    return get_json(cluster, "trainingrun", run["metadata"]["name"], "-n", team)


def test_operator_pod_is_admitted_under_restricted_pod_security(cluster: Any, namespaced: Install) -> None:
    selector = f"app.kubernetes.io/instance={namespaced.release}"

    def pods() -> list[Any]:
        found: list[Any] = get_json(cluster, "pods", "-n", namespaced.namespace, "-l", selector)["items"]
        return found

    wait_until(lambda: len(pods()) == 2, timeout=60, what="both operator pods (admitted under PSA restricted)")
    for pod in pods():
        assert pod["spec"]["serviceAccountName"] == namespaced.service_account
        assert restricted_violations(pod["spec"], "operator pod") == []


def test_operator_identity_can_do_each_step_of_a_run(cluster: Any, namespaced: Install, team: str) -> None:
    run = _create_run(cluster, team)
    name, uid = run["metadata"]["name"], run["metadata"]["uid"]
    spec = TrainingRunSpec.model_validate(run["spec"])
    cluster.kubectl("create", "secret", "generic", "loka-s3", "-n", team, "--from-literal=AWS_ACCESS_KEY_ID=x")
    op = namespaced.as_operator

    # kopf lists and watches runs; the reconciler writes only their status.
    _must(op("get", "trainingruns", "-n", team))
    # A direct PATCH, as the operator makes it (kubectl would GET the status first, which it need not).
    objects: Any = client.CustomObjectsApi(namespaced.api())
    patched = objects.patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", team, "trainingruns", name, {"status": {"phase": "Pending", "observedGeneration": 1}}
    )
    assert patched["status"]["phase"] == "Pending"
    # Secrets are read by name only.
    _must(op("get", "secret", "loka-s3", "-n", team))
    # The per-run identity: the Role grants what the operator holds, so no bind/escalate is needed. Every child
    # carries blockOwnerDeletion, which OwnerReferencesPermissionEnforcement (on here, as on OpenShift) checks.
    for child in (
        build_service_account(name, team, uid),
        build_role(name, team, uid),
        build_role_binding(name, team, uid),
    ):
        _must(op("create", "-f", "-", input=json.dumps(child)))
    assert spec.queue is not None
    queue = build_local_queue(spec.queue, team)
    assert queue is not None
    _must(op("create", "-f", "-", input=json.dumps(queue)))
    rayjob = build_rayjob(spec, run=name, namespace=team, uid=uid, settings=RayJobSettings())
    _must(op("create", "-f", "-", input=json.dumps(rayjob)))
    # Kueue makes a Workload for the queued RayJob; suspending a run deactivates it.
    wait_until(
        lambda: bool(get_json(cluster, "workloads.kueue.x-k8s.io", "-n", team)["items"]),
        timeout=60,
        what="Kueue's Workload for the RayJob",
    )
    workload = op("get", "workloads.kueue.x-k8s.io", "-n", team, "-o", "jsonpath={.items[0].metadata.name}")
    _must(workload)
    objects.patch_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", team, "workloads", workload.stdout, {"spec": {"active": False}}
    )
    _must(op("delete", "rayjob", rayjob["metadata"]["name"], "-n", team))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": team},
        "involvedObject": {"apiVersion": "loka.dev/v1alpha1", "kind": "TrainingRun", "name": name, "namespace": team},
        "reason": "Check",
        "message": "rbac test",
        "type": "Normal",
    }
    _must(op("create", "-f", "-", input=json.dumps(event)))
    # Leader election: a Lease in the operator's own namespace, and only there.
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": namespaced.release, "namespace": namespaced.namespace},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15},
    }
    _must(op("create", "-f", "-", input=json.dumps(lease)))
    _must(op("replace", "-f", "-", input=json.dumps({**lease, "spec": {"holderIdentity": "replica-b"}})))
    _forbidden(op("create", "-f", "-", input=json.dumps({**lease, "metadata": {"name": "x", "namespace": team}})))


def test_operator_identity_is_refused_everything_else(cluster: Any, namespaced: Install, team: str) -> None:
    run = _create_run(cluster, team)
    op = namespaced.as_operator
    cluster.kubectl("create", "secret", "generic", "elsewhere", "-n", namespaced.namespace, "--from-literal=k=v")

    _forbidden(op("get", "secret", "elsewhere", "-n", namespaced.namespace))  # a namespace it does not watch
    _forbidden(op("get", "secrets", "-n", "kube-system"))
    _forbidden(op("get", "secrets", "-n", team))  # list: it may only get a Secret it is told the name of
    _forbidden(op("delete", "namespace", team))
    _forbidden(op("delete", "trainingrun", run["metadata"]["name"], "-n", team))
    spec_write = '{"spec":{"maxRestarts":9}}'
    _forbidden(op("patch", "trainingrun", run["metadata"]["name"], "-n", team, "--type=merge", "-p", spec_write))
    _forbidden(op("run", "shell", "--image=busybox", "-n", team, "--restart=Never"))
    _forbidden(op("get", "trainingruns", "--all-namespaces"))
    _forbidden(op("create", "clusterrolebinding", "grab", "--clusterrole=cluster-admin", f"--user={namespaced.user}"))
    # RBAC escalation check: it cannot grant what it does not hold.
    _forbidden(op("create", "role", "wider", "-n", team, "--verb=list", "--resource=secrets"))
    _forbidden(op("get", "trainingruns", "-n", "default"))


def test_cluster_mode_grants_cluster_wide_operator_verbs_only(cluster: Any, namespace: str) -> None:
    with installed_chart(cluster, namespace) as install:
        assert install.can("list", "trainingruns.loka.dev")
        assert install.can("patch", "trainingruns.loka.dev", "default", "--subresource=status")
        assert install.can("create", "rayjobs.ray.io", "default")
        assert install.can("get", "secrets", "default")
        assert install.can("update", "trainingruns.loka.dev", "default", "--subresource=finalizers")
        assert install.can("update", "leases.coordination.k8s.io", namespace)
        refused = [
            ("list", "secrets", "default"),
            ("watch", "secrets", None),
            ("delete", "namespaces", None),
            ("create", "pods", "default"),
            ("delete", "trainingruns.loka.dev", "default"),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("list", "namespaces", None),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
            ("bind", "clusterroles.rbac.authorization.k8s.io", None),
            ("escalate", "roles.rbac.authorization.k8s.io", "default"),
            ("impersonate", "serviceaccounts", "default"),
            ("patch", "nodes", None),
            ("update", "leases.coordination.k8s.io", "default"),
        ]
        allowed = [(verb, resource, ns) for verb, resource, ns in refused if install.can(verb, resource, ns)]
        assert allowed == []


def test_ray_pods_kuberay_creates_from_the_operators_rayjob_pass_restricted(cluster: Any, team: str) -> None:
    """Head, worker and submitter pods as KubeRay really makes them (with what it injects), in a
    namespace that enforces the `restricted` Pod Security level; then the stricter restricted-v2 check."""
    run = json.loads(json.dumps(SAMPLE))
    del run["spec"]["queue"]  # straight to KubeRay: Kueue admission is not what this test is about
    spec = TrainingRunSpec.model_validate(run["spec"])
    name = run["metadata"]["name"]
    rayjob = build_rayjob(spec, run=name, namespace=team, uid="0", settings=RayJobSettings("K8sJobMode"))
    del rayjob["metadata"]["ownerReferences"]  # no TrainingRun here
    trainer_identity = build_service_account(name, team, "0")
    del trainer_identity["metadata"]["ownerReferences"]
    _must(apply(cluster, [trainer_identity, rayjob]))

    def pods() -> dict[str, Any]:
        found = get_json(cluster, "pods", "-n", team)["items"]
        return {p["metadata"]["name"]: p for p in found}

    def kinds(found: dict[str, Any]) -> set[str]:
        labels = [p["metadata"].get("labels", {}) for p in found.values()]
        return {
            lbl.get("ray.io/node-type") or ("submitter" if "batch.kubernetes.io/job-name" in lbl else "")
            for lbl in labels
        }

    def refused() -> str:
        events = get_json(cluster, "events", "-n", team)["items"]
        return "; ".join(e["message"] for e in events if "PodSecurity" in e.get("message", ""))

    try:
        wait_until(
            lambda: {"head", "worker", "submitter"} <= kinds(pods()), timeout=120, what="head, worker, submitter"
        )
    except Exception as error:
        raise AssertionError(f"pods seen: {kinds(pods())}; refusals: {refused() or 'none'}") from error
    assert refused() == ""
    for pod_name, pod in pods().items():
        assert restricted_violations(pod["spec"], pod_name) == []
