"""The chart through real Helm against the real API server: install, upgrade, uninstall."""

from __future__ import annotations

import uuid
from typing import Any

from tests.deploy.chart import CHART, helm
from tests.deploy.install import ensure_crd, get_json


def test_helm_installs_upgrades_and_uninstalls_the_chart(cluster: Any, namespace: str) -> None:
    ensure_crd(cluster)  # shared with other tests: Helm skips a CRD that already exists and never deletes it
    release = f"loka-{uuid.uuid4().hex[:6]}"
    common = ["--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig)]
    scope = ["--set", f"watchNamespaces[0]={namespace}"]

    installed = helm("install", release, CHART, *common, *scope, "--wait", "--timeout", "120s")
    assert installed.returncode == 0, installed.stderr
    deployment = get_json(cluster, "deployment", f"{release}-loka-operator", "-n", namespace)
    assert deployment["status"].get("availableReplicas") == 2  # one leads, one stands by
    assert get_json(cluster, "role", f"{release}-loka-operator", "-n", namespace)["rules"]
    assert get_json(cluster, "role", f"{release}-loka-operator-leader-election", "-n", namespace)["rules"]

    upgraded = helm("upgrade", release, CHART, *common, *scope, "--set", "operator.logLevel=debug", "--wait")
    assert upgraded.returncode == 0, upgraded.stderr
    args = get_json(cluster, "deployment", f"{release}-loka-operator", "-n", namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--verbose" in args

    refused = helm("upgrade", release, CHART, *common, "--set", "metrics.port=http")
    assert refused.returncode != 0
    assert "/metrics/port" in refused.stderr

    removed = helm("uninstall", release, *common, "--wait")
    assert removed.returncode == 0, removed.stderr
    selector = f"app.kubernetes.io/instance={release}"
    left = cluster.kubectl(
        "get", "deploy,role,rolebinding,sa,svc", "-n", namespace, "-l", selector, "-o", "name"
    ).stdout
    assert left.strip() == ""
    assert cluster.kubectl("get", "crd", "trainingruns.loka.dev", check=False).returncode == 0
