"""Fixtures every test can use: the local control plane and a fresh namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.build import build_all
from localcluster.controlplane import LocalCluster, running_cluster, wait_until


def pytest_configure(config: pytest.Config) -> None:
    """Ray with its token auth off, unless a test sets it: a `ray.init()` that starts a local instance turns token
    auth on and writes ~/.ray/auth_token, after which every `ray start` on this machine requires the token while a
    client that connects by address sends none, so the suite's Ray clusters broke or not depending on test order.
    The local stack's Ray head runs with it off too (localcluster/stack.py)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


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
