"""The operator's own integration tests, passing with the operator running as the chart's
ServiceAccount (cluster scope: the tests make their namespaces as they go) instead of the cluster admin:
the chart's RBAC is enough."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localcluster.tools import REPO
from tests.deploy.chart_identity import ENV, STARTS_ENV
from tests.deploy.install import Install, apply, installed_chart, service_account_kubeconfig

# The tests that exercise every verb the operator uses: runs, RayJobs, the per-run identity, the
# LocalQueue, Secrets, Kueue Workloads (suspend), events, deletion and the status subresource.
SELECTED = (
    "test_run_is_admitted_and_running or test_missing_secret_waits_and_recovers_when_created"
    " or test_suspend_releases_the_cluster_and_resume_starts_a_new_attempt"
    " or test_unqueued_run_suspends_through_the_rayjob"
    " or test_completion_succeeds_and_ttl_removes_only_the_rayjob"
    " or test_deleting_a_run_removes_its_children"
)
# What the API server says when RBAC refuses the operator (a terminating namespace says something else).
RBAC_REFUSAL = re.compile(
    r'is forbidden: User "system:serviceaccount:[^"]+" cannot \w+ resource "[^"]+"(?: in API group "[^"]*")?'
)


def _operator_suite(selected: str, kubeconfig: Path, starts: Path) -> subprocess.CompletedProcess[str]:
    basetemp = starts.parent / "suite"
    suite = ["tests/operator/test_reconcile.py", "-k", selected, "-q", "--no-header", f"--basetemp={basetemp}"]
    plugins = ["-p", "tests.deploy.chart_identity", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *suite, *plugins],
        cwd=REPO,
        env={**os.environ, ENV: str(kubeconfig), STARTS_ENV: str(starts)},
        capture_output=True,
        text=True,
        check=False,
        timeout=840,
    )


def test_operator_integration_tests_pass_as_the_charts_service_account(
    cluster: Any, namespace: str, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    with installed_chart(cluster, namespace, {"scope": "cluster"}) as install, _harness_scanning(install):
        kubeconfig = service_account_kubeconfig(install, tmp_path / "kubeconfig")
        done = _operator_suite(SELECTED, kubeconfig, starts)
    assert set(starts.read_text().splitlines()) == {str(kubeconfig)}, "the operator did not run as the chart identity"
    refusals = sorted(set(RBAC_REFUSAL.findall(_operator_log(tmp_path))))
    assert refusals == [], "the chart's RBAC refused the operator"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_same_tests_fail_for_an_identity_without_those_rights(cluster: Any, namespace: str, tmp_path: Path) -> None:
    # The control: a ServiceAccount with no RBAC at all cannot make the operator work.
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    nobody = Install(cluster, "none", namespace, "nobody")
    kubeconfig = service_account_kubeconfig(nobody, tmp_path / "kubeconfig")
    done = _operator_suite("test_run_is_admitted_and_running", kubeconfig, tmp_path / "starts")
    assert done.returncode != 0
    assert "1 failed" in done.stdout
    assert RBAC_REFUSAL.search(_operator_log(tmp_path)), "the refusal check would not have noticed"


@contextmanager
def _harness_scanning(install: Install) -> Iterator[None]:
    """The operator suite runs `loka-operator --namespace 'lokaop-<session>-*'`, a pattern, for which kopf
    must list and watch namespaces and CRDs. The chart never passes a pattern (its schema accepts only
    namespace names), so it does not grant that; the harness gets it here, and only this."""
    name = f"{install.release}-test-harness-scanning"
    rules = [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    ]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": install.service_account, "namespace": install.namespace}],
    }
    done = apply(install.cluster, [{**role, "rules": rules}, binding])
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        install.cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found", check=False)


def _operator_log(tmp_path: Path) -> str:
    logs = sorted((tmp_path / "suite").glob("operator*/loka-operator.log"))
    assert logs, "the operator suite left no operator log"
    return "".join(log.read_text(errors="replace") for log in logs)
