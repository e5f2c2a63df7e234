"""The operator's own integration tests, passing with the operator running as the chart's
ServiceAccount (cluster scope: the tests make their namespaces as they go) instead of the cluster admin:
the chart's RBAC is enough. And the operator keeps working as that identity when its token is rotated
under it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import wait_until
from localcluster.operator_process import OperatorProcess
from localcluster.tools import REPO
from tests.deploy.chart_identity import ENV, STARTS_ENV, _ClusterAs
from tests.deploy.install import (
    Install,
    apply,
    bound_token,
    installed_chart,
    service_account_kubeconfig,
    write_kubeconfig,
)

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
    # The operator stops at startup (its first LIST is refused), so the test errors in its fixture or fails.
    assert re.search(r"\b1 (failed|error)\b", done.stdout), done.stdout[-2000:]
    assert RBAC_REFUSAL.search(_operator_log(tmp_path)), "the refusal check would not have noticed"
    # The operator that never became ready was stopped with the fixture that gave up on it, not left running.
    assert _processes_using(kubeconfig) == [], "an operator started by the inner suite outlived it"


def _processes_using(kubeconfig: Path) -> list[int]:
    """PIDs of live processes whose environment names ``kubeconfig`` (the inner suite's operator)."""
    wanted = f"KUBECONFIG={kubeconfig}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


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


# An exec credential plugin, as EKS, GKE and `oc` kubeconfigs have: it prints whatever token the file holds now.
EXEC_PLUGIN = (
    "import json, sys; print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
    " 'status': {'token': open(sys.argv[1]).read().strip()}}))"
)


@pytest.mark.parametrize("credentials", ["kubeconfig-token", "exec-plugin"])
def test_operator_keeps_working_when_its_token_is_replaced_and_the_old_one_revoked(
    cluster: Any, namespace: str, tmp_path: Path, credentials: str
) -> None:
    # Cluster scope: the runs go into a namespace of their own, made after the install.
    with installed_chart(cluster, namespace, {"scope": "cluster"}) as install, _harness_scanning(install):
        for holder in ("token-a", "token-b"):
            cluster.kubectl("create", "secret", "generic", holder, "-n", namespace)
        kubeconfig, token_file = tmp_path / "kubeconfig", tmp_path / "token"

        def use(token: str) -> None:
            if credentials == "exec-plugin":
                token_file.write_text(token)
                plugin: dict[str, Any] = {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable}
                plugin["args"] = ["-c", EXEC_PLUGIN, str(token_file)]
                write_kubeconfig(install, kubeconfig, {"exec": plugin})
            else:
                write_kubeconfig(install, kubeconfig, {"token": token})

        first = bound_token(install, "token-a")
        use(first)
        prefix = f"lokatok-{uuid.uuid4().hex[:4]}-"
        as_chart: Any = _ClusterAs(cluster, str(kubeconfig))
        operator = OperatorProcess(as_chart, tmp_path / "operator.log", namespace_prefix=prefix)
        runs = f"{prefix}runs"
        cluster.kubectl("create", "namespace", runs)
        operator.start()
        try:
            apply(cluster, [_run("early", runs)])
            wait_until(lambda: _has_rayjob(cluster, runs, "early"), timeout=90, what="the first run's RayJob")

            # The token is rotated: a new one in place, the old one revoked (its bound Secret deleted).
            use(bound_token(install, "token-b"))
            cluster.kubectl("delete", "secret", "token-a", "-n", namespace)
            wait_until(lambda: _refused(cluster, first), timeout=30, what="the old token to be refused")

            apply(cluster, [_run("late", runs)])
            wait_until(lambda: _has_rayjob(cluster, runs, "late"), timeout=90, what="a RayJob made after the rotation")
            assert "read them again" in operator.log_tail(400)
        finally:
            operator.stop()
            cluster.kubectl("delete", "namespace", runs, "--wait=false", check=False)


def _run(name: str, namespace: str) -> dict[str, Any]:
    spec = {
        "image": "ghcr.io/acme/loka:rl-train",
        "engine": "trl",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
        "resources": {"workers": 0, "gpusPerWorker": 0, "head": {"cpu": "50m", "memory": "64Mi"}},
    }
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": "loka.dev/v1alpha1", "kind": "TrainingRun", "metadata": metadata, "spec": spec}


def _has_rayjob(cluster: Any, namespace: str, name: str) -> bool:
    return bool(cluster.kubectl("get", "rayjob", name, "-n", namespace, check=False).returncode == 0)


def _refused(cluster: Any, token: str) -> bool:
    done = cluster.kubectl(f"--token={token}", "get", "--raw", "/api", check=False)
    return bool(done.returncode != 0 and "Unauthorized" in done.stderr)
