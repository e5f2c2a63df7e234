"""The operator's own integration tests, passing with the operator running as the chart's
ServiceAccount (cluster mode) instead of the cluster admin: the chart's RBAC is enough."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.deploy.install import installed_chart, service_account_kubeconfig
from tests.deploy.tools import REPO

# The tests that exercise every verb the operator uses: runs, RayJobs, the per-run identity, the
# LocalQueue, Secrets, Kueue Workloads (suspend), events, deletion and the status subresource.
SELECTED = (
    "test_run_is_admitted_and_running or test_missing_secret_waits_and_recovers_when_created"
    " or test_suspend_releases_the_cluster_and_resume_starts_a_new_attempt"
    " or test_unqueued_run_suspends_through_the_rayjob"
    " or test_completion_succeeds_and_ttl_removes_only_the_rayjob"
    " or test_deleting_a_run_removes_its_children"
)


def test_operator_integration_tests_pass_as_the_charts_service_account(
    cluster: Any, namespace: str, tmp_path: Path
) -> None:
    with installed_chart(cluster, namespace) as install:
        kubeconfig = service_account_kubeconfig(install, tmp_path / "kubeconfig")
        suite = ["tests/operator/test_reconcile.py", "-k", SELECTED, "-q", "--no-header"]
        plugins = ["-p", "tests.deploy.chart_identity", "-p", "no:cacheprovider"]
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *suite, *plugins],
            cwd=REPO,
            env={**os.environ, "LOKA_OPERATOR_KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            check=False,
            timeout=840,
        )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "6 passed" in summary, summary
