"""The operator's relist: one LIST per kind replaces what the caches hold, in the namespaces it watches only."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from loka_api import RunPhase, kinds
from loka_api.kinds import Kind
from loka_operator import handlers
from loka_operator.cache import ListScope
from loka_operator.children import EVALUATION_JOB, NETWORK_POLICY, RAY_JOB, REGISTRY
from loka_operator.config import OperatorConfig
from loka_operator.cycles import CycleReconciler
from loka_operator.evaluations import EvaluationReconciler
from loka_operator.handlers import OperatorState, in_scope, relist
from loka_operator.kube import KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.reconcile import Reconciler
from loka_operator.workqueue import RunQueue


class ListingClient:
    """Answers LISTs from what the test says exists; nothing else is expected of it."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}

    async def list(self, resource: Kind, namespace: str | None = None, *, label_selector: str = "") -> list[Any]:
        found = self.objects.get(resource.kind, [])
        return [b for b in found if namespace is None or b["metadata"]["namespace"] == namespace]


def run(name: str, uid: str, namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": kinds.TRAINING_RUN.api_version,
        "kind": kinds.TRAINING_RUN.kind,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1", "generation": 1},
        "spec": {},
        "status": {"phase": "Running"},
    }


def rayjob(run_name: str, uid: str, namespace: str = "team-a") -> dict[str, Any]:
    labels = {**RAY_JOB.labels, "loka.dev/run": run_name}
    return {
        "metadata": {"name": run_name, "namespace": namespace, "uid": uid, "resourceVersion": "1", "labels": labels}
    }


def state_of(client: ListingClient, namespaces: tuple[str, ...]) -> tuple[OperatorState, list[str]]:
    kube = cast("KubeClient", client)
    metrics = OperatorMetrics()
    reconciler = Reconciler(client=kube, config=OperatorConfig(namespaces=namespaces), metrics=metrics)
    reconciled: list[str] = []

    async def reconcile(key: str, drift: bool) -> float | None:
        reconciled.append(key)
        return None

    scope = ListScope([None], {child: child.selector for child in REGISTRY}, in_scope(namespaces))
    evaluations = EvaluationReconciler(reconciler)
    cycles = CycleReconciler(reconciler, evaluations)
    state = OperatorState(
        kube,
        reconciler,
        RunQueue(reconcile),
        metrics,
        scope,
        evaluations,
        RunQueue(reconcile),
        cycles,
        RunQueue(reconcile),
    )
    return state, reconciled


def test_a_relist_forgets_a_run_deleted_in_the_gap_and_its_children_and_wakes_its_dependents() -> None:
    async def scenario() -> None:
        client = ListingClient()
        state, reconciled = state_of(client, ("team-*",))
        cache, children = state.reconciler.cache, state.reconciler.children
        for name, uid in (("gone", "u1"), ("kept", "u2")):
            cache.observe(run(name, uid))
            children.observe(RAY_JOB, f"team-a/{name}", rayjob(name, f"rj-{uid}"))
            state.metrics.observe_phase(f"team-a/{name}", RunPhase.RUNNING)
        state.reconciler.waiters.wait("team-a/follower", "team-a/gone")
        # What exists now; and a run in a namespace this operator does not watch.
        client.objects = {
            kinds.TRAINING_RUN.kind: [run("kept", "u2"), run("other", "u9", namespace="elsewhere")],
            RAY_JOB.name: [rayjob("kept", "rj-u2"), rayjob("other", "rj-u9", namespace="elsewhere")],
        }
        await relist(state)
        await asyncio.sleep(0)
        assert cache.keys() == ["team-a/kept"]
        assert children.bodies(RAY_JOB, "team-a/gone") == []
        assert children.bodies(RAY_JOB, "team-a/other") == []
        assert state.metrics.runs.labels(phase="Running")._value.get() == 1
        assert reconciled == ["team-a/follower"]  # told its source is gone; nothing else changed

    asyncio.run(scenario())


def parent(kind: Kind, name: str, uid: str, phase: str) -> dict[str, Any]:
    """An Evaluation or a RewardCycle as the API server lists it."""
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": "1", "generation": 1},
        "spec": {},
        "status": {"phase": phase},
    }


def evaluation(name: str, uid: str) -> dict[str, Any]:
    return parent(kinds.EVALUATION, name, uid, "Pending")


def evaluation_job(name: str, uid: str) -> dict[str, Any]:
    labels = {**EVALUATION_JOB.labels, "loka.dev/evaluation": name}
    meta = {"name": f"{name}-eval", "namespace": "team-a", "uid": uid, "resourceVersion": "1", "labels": labels}
    return {"metadata": meta}


def test_a_relist_forgets_an_evaluation_deleted_in_the_gap_and_its_job_and_wakes_the_runs_waiting_on_it() -> None:
    async def scenario() -> None:
        client = ListingClient()
        state, reconciled = state_of(client, ("team-*",))
        cache, children = state.evaluations.cache, state.evaluations.children
        for name, uid in (("gone", "e1"), ("kept", "e2")):
            cache.observe(evaluation(name, uid))
            children.observe(EVALUATION_JOB, f"team-a/{name}", evaluation_job(name, f"j-{uid}"))
        state.reconciler.evaluation_waiters.wait("team-a/rm", "team-a/gone")
        client.objects = {
            kinds.EVALUATION.kind: [evaluation("kept", "e2")],
            EVALUATION_JOB.name: [evaluation_job("kept", "j-e2")],
        }
        await relist(state)
        await asyncio.sleep(0)
        assert cache.keys() == ["team-a/kept"]
        assert children.bodies(EVALUATION_JOB, "team-a/gone") == []
        assert reconciled == ["team-a/rm"]  # told its Evaluation is gone; nothing else changed

    asyncio.run(scenario())


def test_kopf_listing_evaluations_jobs_or_cycles_asks_for_their_relist(monkeypatch: pytest.MonkeyPatch) -> None:
    from kopf._cogs.clients import watching

    async def stream(*, resource: Any, **_: Any) -> Any:
        yield watching.Bookmark.LISTED

    monkeypatch.setattr(watching, "infinite_watch", stream)
    asked: list[str] = []
    monkeypatch.setattr(handlers, "_listed_again", lambda state, kind: asked.append(kind))

    async def scenario() -> None:
        state, _ = state_of(ListingClient(), ())
        handlers._hear_kopf_listings(state)
        for kind in (kinds.EVALUATION, EVALUATION_JOB.kind, kinds.REWARD_CYCLE):
            resource = type("Resource", (), {"group": kind.group, "plural": kind.plural})
            async for _ in watching.infinite_watch(resource=resource(), settings=None, namespace=None):  # type: ignore[arg-type]
                pass
        assert asked == [kinds.EVALUATION.kind, EVALUATION_JOB.name, kinds.REWARD_CYCLE.kind]

    asyncio.run(scenario())


def test_namespace_patterns_are_read_as_kopf_reads_them() -> None:
    watched = in_scope(("team-*, !team-b",))
    assert watched("team-a") and not watched("team-b") and not watched("other")
    assert in_scope(())("anything")


def test_a_burst_of_listed_objects_asks_for_one_relist_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    relists: list[set[str]] = []

    async def counted(state: OperatorState, wanted: set[str] | None = None) -> None:
        relists.append(set(wanted or ()))

    monkeypatch.setattr(handlers, "relist", counted)
    monkeypatch.setattr(handlers, "RELIST_DELAY_SECONDS", 0.05)

    async def scenario() -> None:
        state, _ = state_of(ListingClient(), ())
        for kind in ("TrainingRun", "RayJob", "TrainingRun", "TrainingRun"):
            handlers._listed_again(state, kind)
            await asyncio.sleep(0.02)  # kopf's burst: each object shortly after the last
        assert state.relisting is not None
        await state.relisting
        assert relists == [{"TrainingRun", "RayJob"}]

    asyncio.run(scenario())


def test_an_empty_list_kopf_makes_asks_for_a_relist_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last NetworkPolicy deleted while the watch was away: kopf's LIST finds nothing, and says so only by the
    end-of-list mark of its watch stream."""
    from kopf._cogs.clients import watching

    async def stream(*, resource: Any, **_: Any) -> Any:
        yield watching.Bookmark.LISTED

    monkeypatch.setattr(watching, "infinite_watch", stream)
    asked: list[str] = []
    monkeypatch.setattr(handlers, "_listed_again", lambda state, kind: asked.append(kind))

    async def scenario() -> None:
        state, _ = state_of(ListingClient(), ())
        handlers._hear_kopf_listings(state)
        policies = type("Resource", (), {"group": NETWORK_POLICY.kind.group, "plural": NETWORK_POLICY.kind.plural})
        async for _ in watching.infinite_watch(resource=policies(), settings=None, namespace=None):  # type: ignore[arg-type]
            pass
        assert asked == [NETWORK_POLICY.name]

    asyncio.run(scenario())


def cycle(name: str, uid: str) -> dict[str, Any]:
    return parent(kinds.REWARD_CYCLE, name, uid, "Running")


def test_a_relist_forgets_a_cycle_deleted_in_the_gap_so_no_resync_makes_its_next_stage() -> None:
    """A cycle still cached after its deletion is reconciled again at every resync, from what the caches hold: it
    would create its next stage (a TrainingRun that starts training) for a cycle that no longer exists."""

    async def scenario() -> None:
        client = ListingClient()
        state, reconciled = state_of(client, ("team-*",))
        for name, uid in (("gone", "c1"), ("kept", "c2")):
            state.cycles.cache.observe(cycle(name, uid))
        client.objects = {kinds.REWARD_CYCLE.kind: [cycle("kept", "c2")]}
        await relist(state)
        await asyncio.sleep(0)
        assert state.cycles.cache.keys() == ["team-a/kept"]
        assert reconciled == []  # the kept cycle did not change

    asyncio.run(scenario())
