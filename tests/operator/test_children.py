"""A run's children: never someone else's object, never the previous run's, and a refusal is visible."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import eventually, run_manifest, wait_condition, wait_phase
from tests.operator.kube import Kube

RUN = "qwen"
IDENTITY = f"loka-run-{RUN}"
HOLD = "loka.dev/test-hold"
FOREIGN_RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]


def test_children_that_someone_else_owns_are_never_adopted(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": IDENTITY}})
    kube.rbac.create_namespaced_role(ns, {"metadata": {"name": IDENTITY}, "rules": FOREIGN_RULES})
    kube.create_run(run_manifest(RUN, ns))

    launched = wait_condition(kube, ns, RUN, "Launched", "False", reason="NameConflict")
    assert f"ServiceAccount named {IDENTITY!r} already exists" in launched["message"]
    assert kube.phase(ns, RUN) == "Pending"
    assert kube.rayjob(ns, RUN) is None
    account = kube.core.read_namespaced_service_account(IDENTITY, ns)
    assert not account.metadata.owner_references
    role = kube.rbac.read_namespaced_role(IDENTITY, ns)
    assert [(r.resources, r.verbs) for r in role.rules] == [(["configmaps"], ["get"])]  # never patched

    # Once the owner removes them, the run creates its own.
    kube.core.delete_namespaced_service_account(IDENTITY, ns)
    kube.rbac.delete_namespaced_role(IDENTITY, ns)
    wait_phase(kube, ns, RUN, "Running", timeout=120)
    uid = (kube.run(ns, RUN) or {})["metadata"]["uid"]
    account = kube.core.read_namespaced_service_account(IDENTITY, ns)
    for owned in (account, kube.rbac.read_namespaced_role(IDENTITY, ns)):
        assert [ref.uid for ref in owned.metadata.owner_references] == [uid]


def test_a_recreated_run_waits_for_the_previous_runs_children_to_be_collected(
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    kube.create_run(run_manifest(RUN, ns))
    wait_phase(kube, ns, RUN, "Running")
    old_uid = (kube.run(ns, RUN) or {})["metadata"]["uid"]
    # Hold the old ServiceAccount while garbage collection deletes it (as a slow finalizer would).
    kube.core.patch_namespaced_service_account(IDENTITY, ns, {"metadata": {"finalizers": [HOLD]}})
    kube.delete_run(ns, RUN)
    eventually(
        lambda: kube.core.read_namespaced_service_account(IDENTITY, ns).metadata.deletion_timestamp,
        what="garbage collection to delete the old run's ServiceAccount",
    )
    eventually(lambda: kube.rayjob(ns, RUN) is None, timeout=90, what="the old RayJob to be collected")

    kube.create_run(run_manifest(RUN, ns))
    launched = wait_condition(kube, ns, RUN, "Launched", "False", reason="WaitingForPreviousRun")
    assert IDENTITY in launched["message"]
    assert kube.rayjob(ns, RUN) is None  # nothing launched on a ServiceAccount about to vanish

    kube.core.patch_namespaced_service_account(IDENTITY, ns, {"metadata": {"finalizers": None}})
    wait_phase(kube, ns, RUN, "Running", timeout=120)
    new_uid = (kube.run(ns, RUN) or {})["metadata"]["uid"]
    assert new_uid != old_uid
    account = kube.core.read_namespaced_service_account(IDENTITY, ns)
    assert [ref.uid for ref in account.metadata.owner_references] == [new_uid]
    assert (kube.rayjob(ns, RUN) or {})["metadata"]["ownerReferences"][0]["uid"] == new_uid


@pytest.fixture
def rayjob_quota(kube: Kube, ns: str) -> Iterator[str]:
    """An object-count ResourceQuota that allows no RayJob in the namespace."""
    name = "no-rayjobs"
    kube.core.create_namespaced_resource_quota(
        ns, {"metadata": {"name": name}, "spec": {"hard": {"count/rayjobs.ray.io": "0"}}}
    )
    # The quota admission refuses everything until the quota controller has written its status.
    eventually(
        lambda: (kube.core.read_namespaced_resource_quota(name, ns).status.hard or {}).get("count/rayjobs.ray.io"),
        what="the quota controller to account the quota",
    )
    yield name


def test_a_create_the_api_server_refuses_is_a_condition_in_its_words(
    operator: OperatorProcess, kube: Kube, ns: str, rayjob_quota: str
) -> None:
    kube.create_run(run_manifest(RUN, ns))

    launched = wait_condition(kube, ns, RUN, "Launched", "False", reason="CreateRefused")
    assert "exceeded quota: no-rayjobs" in launched["message"]
    assert "count/rayjobs.ray.io" in launched["message"]
    assert kube.phase(ns, RUN) == "Pending"
    warnings: list[Any] = eventually(
        lambda: [e for e in kube.events(ns, RUN) if e.type == "Warning" and "exceeded quota" in e.message],
        what="a Warning Event with the API server's words",
    )
    assert warnings

    # The admin raises the quota: the run launches without anyone touching it.
    kube.core.patch_namespaced_resource_quota(rayjob_quota, ns, {"spec": {"hard": {"count/rayjobs.ray.io": "1"}}})
    wait_phase(kube, ns, RUN, "Running", timeout=120)
    assert kube.condition(ns, RUN, "Launched")["status"] == "True"
