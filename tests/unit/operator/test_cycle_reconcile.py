"""The RewardCycle reconciler against a fake API server: it creates the stages the planner asks for, never adopts a
name someone else holds, takes its own stage found by a create's 409, and fails on a stage the API server refuses."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import yaml

from localcluster.tools import REPO
from loka_api import kinds
from loka_api.cycle import Stage
from loka_api.kinds import Kind
from loka_operator.builders.cycle import build_stage
from loka_operator.config import OperatorConfig
from loka_operator.cycles import CycleReconciler
from loka_operator.evaluations import EvaluationReconciler
from loka_operator.kube import ApiError, KubeClient
from loka_operator.reconcile import Reconciler


class FakeApi:
    """Creates, reads and status patches, as the API server answers them (``refuse``: a create answered so)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[str] = []
        self.refuse: ApiError | None = None

    async def create(self, resource: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if self.refuse is not None:
            raise self.refuse
        if (resource.kind, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f"{name} already exists")
        self.objects[(resource.kind, name)] = copy.deepcopy(body)
        self.created.append(name)
        return body

    async def get(self, resource: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource.kind, name))

    async def merge_patch(
        self, resource: Kind, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        body = self.objects[(resource.kind, name)]
        body.setdefault("status", {}).update(patch["status"])
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(body)


def setup() -> tuple[CycleReconciler, FakeApi, dict[str, Any]]:
    api = FakeApi()
    runs = Reconciler(client=cast("KubeClient", api), config=OperatorConfig(namespaces=("team",)))
    cycles = CycleReconciler(runs, EvaluationReconciler(runs))
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "cycle" / "reward-cycle-demo.yaml").read_text())
    body["metadata"] |= {"name": "c", "namespace": "team", "uid": "cycle-uid", "generation": 1, "resourceVersion": "1"}
    api.objects[(kinds.REWARD_CYCLE.kind, "c")] = body
    cycles.cache.observe(copy.deepcopy(body))
    return cycles, api, body


def status(api: FakeApi) -> dict[str, Any]:
    found: dict[str, Any] = api.objects[(kinds.REWARD_CYCLE.kind, "c")].get("status", {})
    return found


def test_a_new_cycle_creates_its_first_iteration_and_says_so() -> None:
    cycles, api, _ = setup()
    outcome = asyncio.run(cycles.reconcile("team", "c"))

    assert api.created == ["c-1-rl", "c-1-eval", "c-1-rm"]
    assert [k for k, _ in api.objects if k != kinds.REWARD_CYCLE.kind] == ["TrainingRun", "Evaluation", "TrainingRun"]
    assert status(api)["phase"] == "Pending" and status(api)["stage"] == "c-1-rl"
    assert outcome.requeue_after is None


def test_a_name_held_by_another_owner_is_never_adopted_and_the_cycle_waits_naming_it() -> None:
    cycles, api, body = setup()
    foreign = build_stage(body, 1, Stage.RL)
    foreign["metadata"] |= {"ownerReferences": [], "uid": "someone-else", "resourceVersion": "1"}
    cycles.runs.cache.observe(foreign)

    outcome = asyncio.run(cycles.reconcile("team", "c"))

    assert api.created == []
    assert status(api)["phase"] == "Pending"
    assert "a TrainingRun named 'c-1-rl' already exists and is not owned by this RewardCycle" in status(api)["message"]
    assert outcome.requeue_after == cycles.runs.config.refused_retry_seconds


def test_its_own_stage_found_by_a_create_is_taken_and_a_refused_stage_fails_the_cycle() -> None:
    cycles, api, body = setup()
    ours = build_stage(body, 1, Stage.RL)  # created before the run's watch delivered it
    api.objects[(kinds.TRAINING_RUN.kind, "c-1-rl")] = ours
    asyncio.run(cycles.reconcile("team", "c"))
    assert api.created == ["c-1-eval", "c-1-rm"]
    assert status(api)["phase"] == "Pending"

    cycles, api, body = setup()
    api.refuse = ApiError(422, "Invalid", "spec.training.batchSize: Invalid value: 0: must be at least 1")
    asyncio.run(cycles.reconcile("team", "c"))
    assert status(api)["phase"] == "Failed"
    assert status(api)["message"] == (
        "the API server refused TrainingRun c-1-rl: spec.training.batchSize: Invalid value: 0: must be at least 1"
    )
