"""The fault tools of `localcluster.faults` do what the operator tests rely on, on the real API server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from localcluster.controlplane import PORTS, LocalCluster, wait_until
from localcluster.faults import FaultProxy, frozen
from localcluster.procfs import stat_fields


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(PORTS.apiserver) as running:
        yield running


def core_as(cluster: LocalCluster, user: str, server: str = "") -> Any:
    path = cluster.kubeconfig_for(user, server=server)
    return client.CoreV1Api(config.new_client_from_config(config_file=str(path)))  # type: ignore[no-untyped-call]


def config_map(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"k": "v"}}


def exists(core: Any, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def test_proxy_passes_stalls_drops_and_resets_and_the_audit_log_names_the_writer(
    cluster: LocalCluster, k8s: Any, namespace: str, proxy: FaultProxy
) -> None:
    user = f"fault-{uuid.uuid4().hex[:6]}"
    through = core_as(cluster, user, proxy.server)
    admin: Any = client.CoreV1Api(k8s)
    through.create_namespaced_config_map(namespace, config_map("passed"))

    # Stall: the request is held, not lost; it lands when the proxy passes again.
    proxy.stall()
    outcome: list[Any] = []
    writer = threading.Thread(
        target=lambda: outcome.append(through.create_namespaced_config_map(namespace, config_map("held"))), daemon=True
    )
    writer.start()
    time.sleep(1)  # a fault's duration, not a wait for state
    assert not exists(admin, namespace, "held")
    proxy.pass_()
    writer.join(timeout=30)
    assert outcome and exists(admin, namespace, "held")

    # Stall, and the client gives up: what it sent never arrives.
    proxy.stall()
    with pytest.raises(HTTPError):
        through.create_namespaced_config_map(namespace, config_map("abandoned"), _request_timeout=1)
    proxy.pass_()
    through.list_namespaced_config_map(namespace)  # the proxy forwards again
    assert not exists(admin, namespace, "abandoned")

    proxy.drop()
    with pytest.raises(HTTPError):
        through.list_namespaced_config_map(namespace, _request_timeout=1)
    proxy.reset()
    started = time.monotonic()
    with pytest.raises(HTTPError):
        through.list_namespaced_config_map(namespace, _request_timeout=10)
    assert time.monotonic() - started < 5  # a reset fails at once
    proxy.pass_()
    through.list_namespaced_config_map(namespace)

    written = {(e.verb, e.resource, e.name, e.code) for e in cluster.audit_log.events(user=user)}
    assert written == {("create", "configmaps", "passed", 201), ("create", "configmaps", "held", 201)}


def test_a_frozen_process_stops_until_continued() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def state() -> str:
        return stat_fields(sleeper.pid)[0]

    try:
        with frozen(sleeper.pid):
            wait_until(lambda: state() == "T", timeout=5, what="the process to stop")  # signals arrive async
        wait_until(lambda: state() != "T", timeout=5, what="the process to run again")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_expired_watches_must_list_again(cluster: LocalCluster, k8s: Any, namespace: str) -> None:
    admin: Any = client.CoreV1Api(k8s)
    admin.create_namespaced_config_map(namespace, config_map("before"))
    old = admin.list_namespaced_config_map(namespace).metadata.resource_version
    admin.delete_namespaced_config_map("before", namespace)

    cluster.expire_watches()

    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=1&resourceVersion={old}&timeoutSeconds=2"
    answer = cluster.kubectl("get", "--raw", path)
    first = json.loads(answer.stdout.splitlines()[0])
    assert (first["type"], first["object"]["code"]) == ("ERROR", 410)  # the deletion is gone with the history
