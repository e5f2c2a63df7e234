"""One level-based reconcile of a RewardCycle (loka_api.cycle): it stamps out its stages and reports them.

1. the body against the RewardCycle model (the CRD's schema and CEL rules held it already)
2. each stage it should have, read from the operator's run and Evaluation caches (only the cycle's own: a stage
   name held by anything else is never adopted; the cycle waits, saying so)
3. what to create (`plan_cycle`, pure): iteration 1's three stages at once, then iteration k+1's when iteration
   k's reward model succeeded. Within an iteration the stages wait for each other by their own links
   (rollouts.fromRun, data.fromEvaluation), as they would if applied by hand; the next burst needs the reward
   model served, so it is created only once that model exists. Nothing is created after a stage failed.
4. the status: every stage's name and phase, the stage in progress, and the cycle's phase from theirs

The stages are owned by the cycle (deleting it deletes them, and they their own children) and are never changed
by it after they are created. A stage deleted before it succeeded is created again (delete a failed one to retry
it); one deleted after it succeeded is remembered as succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loka_api import kinds
from loka_api.cycle import (
    STAGE_FAILED,
    STAGE_SUCCEEDED,
    CyclePhase,
    IterationStatus,
    RewardCycle,
    RewardCycleStatus,
    Stage,
    StageStatus,
    stage_name,
    stages_of,
)
from loka_operator import naming
from loka_operator.builders.cycle import build_stage
from loka_operator.cache import RunCache, WriteLedger
from loka_operator.children import CYCLE_EVALUATION, CYCLE_RUN, ChildKind
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.ownership import Claim, claim
from loka_operator.status import Problem

if TYPE_CHECKING:
    from loka_operator.evaluations import EvaluationReconciler
    from loka_operator.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def child_of(stage: Stage) -> ChildKind:
    return CYCLE_EVALUATION if stage is Stage.EVALUATION else CYCLE_RUN


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class CyclePlan:
    """What one reconcile of a cycle should create, and the status that follows."""

    create: list[JSON]
    status: RewardCycleStatus


def _phase(body: Mapping[str, Any] | None) -> str | None:
    return ((body or {}).get("status") or {}).get("phase")


@dataclass
class _Walk:
    """The cycle's stages in order, as far as they go: each iteration's, up to the first whose reward model has not
    succeeded."""

    rows: list[IterationStatus] = field(default_factory=list)
    create: list[JSON] = field(default_factory=list)
    present: int = 0  # stages that exist (or existed and succeeded)
    failed: tuple[int, StageStatus, str] | None = None  # the first failed stage and its message
    current: tuple[int, StageStatus] | None = None  # the first stage that has not succeeded


def _walk(body: JSON, cycle: RewardCycle, stages: Mapping[str, JSON]) -> _Walk:
    name, iterations = cycle.metadata.name, cycle.spec.iterations
    succeeded_before = {s.name for row in cycle.status.iterations for s in row.stages if s.phase == STAGE_SUCCEEDED}
    walk = _Walk()
    for iteration in range(1, iterations + 1):
        row = IterationStatus(iteration=iteration)
        for stage in stages_of(iteration, iterations):
            seen = StageStatus(stage=stage, kind=child_of(stage).name, name=stage_name(name, iteration, stage))
            stage_body = stages.get(seen.name)
            if stage_body is not None:
                seen.phase, walk.present = _phase(stage_body), walk.present + 1
            elif seen.name in succeeded_before:
                seen.phase, walk.present = STAGE_SUCCEEDED, walk.present + 1  # deleted after it succeeded
            else:
                walk.create.append(build_stage(body, iteration, stage))
            row.stages.append(seen)
            if seen.phase == STAGE_FAILED and walk.failed is None:
                walk.failed = (iteration, seen, ((stage_body or {}).get("status") or {}).get("message") or "")
            if seen.phase != STAGE_SUCCEEDED and walk.current is None:
                walk.current = (iteration, seen)
        walk.rows.append(row)
        if row.stages[-1].phase != STAGE_SUCCEEDED:
            break  # the next burst is rewarded by this iteration's reward model: it waits for it
    if walk.failed is not None:
        walk.create = []  # a failed stage stops the cycle where it is
    return walk


def plan_cycle(
    body: JSON,
    cycle: RewardCycle,
    stages: Mapping[str, JSON],
    *,
    at: datetime,
    blocked: Problem | None = None,
) -> CyclePlan:
    """Pure: the stages to create and the cycle's status, given its own stages as the caches hold them (by name)."""
    walk = _walk(body, cycle, stages)
    total = cycle.spec.iterations
    status = cycle.status.model_copy(deep=True)
    status.observed_generation = cycle.metadata.generation
    status.iterations = walk.rows
    last = walk.rows[-1]
    iteration, stage = walk.current if walk.current is not None else (last.iteration, last.stages[-1])
    status.iteration, status.stage = iteration, stage.name
    status.stage_phase = stage.phase or CyclePhase.PENDING.value
    if walk.failed is not None:
        at_iteration, failed, why = walk.failed
        status.phase = CyclePhase.FAILED
        status.message = f"iteration {at_iteration}: {failed.kind} {failed.name} failed" + (f": {why}" if why else "")
    elif walk.current is None:
        status.phase = CyclePhase.SUCCEEDED
        status.message = f"{total} iteration{'s' if total > 1 else ''} done: {stage.name} succeeded"
    else:
        status.phase = CyclePhase.RUNNING if walk.present else CyclePhase.PENDING
        status.message = f"iteration {iteration} of {total}: {stage.kind} {stage.name} is {status.stage_phase}"
        if blocked is not None:
            status.message = blocked.message
    if status.phase is not CyclePhase.PENDING:
        status.start_time = status.start_time or at
    if status.phase in (CyclePhase.SUCCEEDED, CyclePhase.FAILED):
        status.completion_time = status.completion_time or at
    else:
        status.completion_time = None  # raising spec.iterations resumes a cycle that had succeeded
    return CyclePlan(create=walk.create, status=status)


def status_changes(previous: RewardCycleStatus, current: RewardCycleStatus) -> dict[str, Any]:
    """A merge patch of the status fields that changed; empty means nothing to write."""
    before = previous.model_dump(mode="json", by_alias=True)
    after = current.model_dump(mode="json", by_alias=True)
    return {key: value for key, value in after.items() if before.get(key) != value}


# ------------------------------------------------------------------------------------------ reconcile


@dataclass
class CycleReconciler:
    """Reconciles RewardCycles; it reads their stages from the run and Evaluation reconcilers' caches."""

    runs: Reconciler
    evaluations: EvaluationReconciler
    ledger: WriteLedger = field(default_factory=WriteLedger)
    cache: RunCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = RunCache(self.ledger, kind=kinds.REWARD_CYCLE, reporter_fields=())

    @property
    def client(self) -> KubeClient:
        return self.runs.client

    def forget(self, key: str) -> None:
        self.cache.forget(key)

    def _cached(self, stage: Stage, namespace: str, name: str) -> JSON | None:
        cache = self.evaluations.cache if stage is Stage.EVALUATION else self.runs.cache
        body = cache.run(naming.run_key(namespace, name))
        return None if body is None or body["metadata"].get("deletionTimestamp") else body

    async def reconcile(self, namespace: str, name: str, *, drift: bool = False) -> Outcome:
        from loka_operator.reconcile import Outcome

        del drift  # the stages are never patched: nothing drifts
        body = self.cache.run(naming.run_key(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome()
        try:
            cycle = RewardCycle.model_validate(body)
        except ValidationError as error:
            previous = RewardCycleStatus.model_validate(body.get("status") or {})
            failed = previous.model_copy(
                update={
                    "phase": CyclePhase.FAILED,
                    "message": f"spec does not match the RewardCycle schema: {error}",
                    "observed_generation": int(body["metadata"].get("generation") or 0),
                }
            )
            await self._write_status(body, previous, failed)
            return Outcome(phase=CyclePhase.FAILED.value)
        uid, stages, blocked = cycle.metadata.uid, {}, None
        for iteration in range(1, cycle.spec.iterations + 1):
            for stage in stages_of(iteration, cycle.spec.iterations):
                stage_body = self._cached(stage, namespace, stage_name(name, iteration, stage))
                if stage_body is None:
                    continue
                ours, problem = _claimed(child_of(stage).name, stage_body, name, uid)
                if ours is not None:
                    stages[stage_body["metadata"]["name"]] = ours
                blocked = blocked or problem
        plan = plan_cycle(body, cycle, stages, at=now(), blocked=blocked)
        status = plan.status
        if blocked is None:
            for manifest in plan.create:
                if Stage(_stage_of(manifest)) is Stage.EVALUATION:
                    problem, refused = await self._create(CYCLE_EVALUATION, cycle, manifest)
                else:
                    problem, refused = await self._create(CYCLE_RUN, cycle, manifest)
                if refused:
                    status.phase, status.message = CyclePhase.FAILED, problem.message if problem else None
                    status.completion_time = status.completion_time or now()
                    break
                if problem is not None:
                    blocked = problem
                    status.message = problem.message
                    break
                log.info("created %s %s/%s for RewardCycle %s", manifest["kind"], namespace, _name(manifest), name)
        await self._write_status(body, cycle.status, status)
        retry = self.runs.config.refused_retry_seconds if blocked is not None else None
        return Outcome(requeue_after=retry, phase=status.phase.value if status.phase else None)

    async def _create(self, child: ChildKind, cycle: RewardCycle, manifest: JSON) -> tuple[Problem | None, bool]:
        """Create one stage: (what holds the cycle back, whether the API server refused the stage's spec)."""
        meta, name = cycle.metadata, _name(manifest)
        try:
            await self.client.create(child.kind, meta.namespace, manifest)
        except ApiError as error:
            if error.refused:
                # An invalid stage stays invalid (the templates are immutable); a 403 (RBAC, a quota) may pass later.
                problem = Problem("StageRefused", f"the API server refused {child.name} {name}: {error.message}")
                return problem, error.status != 403
            if error.status != 409:
                raise
            taken = await self.client.get(child.kind, meta.namespace, name)
            if taken is None:
                raise  # deleted meanwhile: the retry creates it
            return _claimed(child.name, taken, meta.name, meta.uid)[1], False
        return None, False

    async def _write_status(self, body: JSON, previous: RewardCycleStatus, current: RewardCycleStatus) -> None:
        changes = status_changes(previous, current)
        if not changes:
            return
        meta = body["metadata"]
        try:
            written = await self.client.merge_patch(
                kinds.REWARD_CYCLE, meta["namespace"], meta["name"], {"status": changes}, subresource="status"
            )
        except ApiError as error:
            if error.status == 404:
                self.forget(naming.run_key(meta["namespace"], meta["name"]))
                return
            raise
        self.cache.wrote(written)
        if current.phase != previous.phase:
            log.info("reward cycle %s/%s: %s -> %s", meta["namespace"], meta["name"], previous.phase, current.phase)


def _name(manifest: JSON) -> str:
    return str(manifest["metadata"]["name"])


def _stage_of(manifest: JSON) -> str:
    return str(manifest["metadata"]["labels"][naming.LABEL_CYCLE_STAGE])


def _claimed(kind: str, obj: JSON, cycle: str, uid: str) -> tuple[JSON | None, Problem | None]:
    name = obj["metadata"]["name"]
    match claim(obj, cycle, uid, owner_kind=kinds.REWARD_CYCLE):
        case Claim.OURS:
            return obj, None
        case Claim.PREVIOUS_RUN:
            return None, Problem(
                "WaitingForPreviousCycle",
                f"the {kind} {name} still belongs to an earlier RewardCycle named {cycle!r}; waiting for garbage "
                "collection to remove it",
            )
        case _:
            return None, Problem(
                "NameConflict",
                f"a {kind} named {name!r} already exists and is not owned by this RewardCycle; delete it or rename "
                "the cycle",
            )
