"""Fixtures every test can use: the local control plane and a fresh namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster import ports

# Which port block this session's control plane and stack use, settled before the control plane's module reads it.
PORT_BLOCK_NOTE = ports.settle_session_block()

from localcluster.build import build_all  # noqa: E402
from localcluster.controlplane import LocalCluster, running_cluster, wait_until  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Ray with its token auth off, unless a test sets it: a `ray.init()` that starts a local instance turns token
    auth on and writes ~/.ray/auth_token, after which every `ray start` on this machine requires the token while a
    client that connects by address sends none, so the suite's Ray clusters broke or not depending on test order.
    The local stack's Ray head runs with it off too (localcluster/stack.py)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_report_header() -> list[str]:
    """A port block other than the default one, and why, at the top of the session's output."""
    return [f"loka: {PORT_BLOCK_NOTE}"] if PORT_BLOCK_NOTE else []


# How much of a failure's report is printed the moment it fails (the whole report still comes at the end).
EARLY_REPORT_CHARS = 4000
_terminal: list[Any] = []  # pytest's terminal reporter, once the session started


def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        _terminal[:] = [reporter]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Print a failure's report as soon as it happens, not only in the summary at the end: a run stopped by CI's
    time limit (or by hand) otherwise shows only its F's, never why."""
    if not report.failed or not _terminal:
        return
    text = report.longreprtext
    if len(text) > EARLY_REPORT_CHARS:
        text = "…" + text[-EARLY_REPORT_CHARS:]
    reporter = _terminal[0]
    reporter.write_line("")
    reporter.write_line(f"--- {report.nodeid} failed ({report.when}), as it happened ---")
    reporter.write_line(text)
    reporter.write_line(f"--- end of {report.nodeid} ---")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Any test that uses the cluster is marked `cluster`, so `-m 'not cluster'` skips them all."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """The local control plane: reused when already up, otherwise started here and stopped at the end."""
    build_all()
    with running_cluster() as (local, _started):
        yield local


@pytest.fixture(scope="session")
def k8s(cluster: LocalCluster) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` authenticated as the cluster admin."""
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(cluster: LocalCluster, k8s: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (and waited for) afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(k8s)
    base = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")
    name = f"{base[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"loka.dev/test": "1"})))
    # The controller-manager creates the default ServiceAccount; pods need it to be admitted.
    wait_until(lambda: _has_default_sa(core, name), timeout=30, what=f"default ServiceAccount in {name}")
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


def _has_default_sa(core: Any, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException:
        return False
    return True
