"""One level-based, idempotent reconcile of an Evaluation (loka_api.evaluation): ordered steps, each "read the
cache, then create", and a status calculated from what was observed.

1. the body against the Evaluation model (the CRD's schema and CEL rules held it already)
2. the source run's rollouts (spec.rollouts.fromRun), as a run's spec.model.fromRun waits for a checkpoint:
   `latest` and `all` wait until the source run succeeded, named steps until it wrote the last of them; the
   folder is recorded in status.rolloutsURI once, and the evaluator reads it from there
3. every referenced Secret and key (the storage credentials, each judge's API key; key names only)
4. the Kueue LocalQueue (when named with its ClusterQueue), the evaluator's ServiceAccount, Role and RoleBinding
   (it may get this Evaluation and patch its status, nothing else), then the Job (`builders.evaluation`)
5. phase and conditions from the Job: suspended is Queued (Kueue has not admitted it, and its Workload says why
   in Kueue's words), running is Running, its Complete or Failed condition ends the Evaluation
6. the status written only when this reconciler's fields changed, conditional on the version it was calculated
   from; each phase it enters is posted once as an Event on the Evaluation and counted in the metrics
   (`loka_evaluations{phase}`, `loka_evaluation_duration_seconds{phase}`), as a run's are

Kueue's Workload for the Job is read while the Job is queued (one LIST by the Job's uid, again every
`QUEUED_LOOK_SECONDS`): the operator's Workload watch follows the runs' only, whose Workloads carry the run label
Kueue copies (`labelKeysToCopy: [loka.dev/run]`).

The evaluator writes the figures (samples, judges, agreement, tokens, the output URIs) into the status itself;
this reconciler writes only its own fields (`OPERATOR_FIELDS`). The children are owned by the Evaluation, so
deleting it deletes them (garbage collection).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loka_api import RunPhase, TrainingRun, kinds, secret_routes
from loka_api.contract import ROLLOUT_STEPS_ALL, ROLLOUT_STEPS_LATEST
from loka_api.evaluation import Evaluation, EvaluationPhase, EvaluationStatus, parse_steps
from loka_api.kueue import JOB_UID_LABEL, workload_of
from loka_operator import lineage, naming
from loka_operator.builders.evaluation import build_evaluation_job, build_evaluator_identity
from loka_operator.cache import Children, RunCache, WriteLedger
from loka_operator.children import (
    EVALUATION_JOB,
    EVALUATOR_ROLE,
    EVALUATOR_ROLE_BINDING,
    EVALUATOR_SERVICE_ACCOUNT,
    ChildKind,
)
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.messages import brief, cause
from loka_operator.ownership import Claim, claim
from loka_operator.status import PhaseEvent, Problem, kueue_wait_reason, set_condition

if TYPE_CHECKING:
    from loka_operator.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

# The status fields this reconciler owns; the evaluator writes the figures beside them.
OPERATOR_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "job",
    "rolloutsURI",
    "startTime",
    "completionTime",
    "message",
)
# What the evaluator writes (`loka_trainer.evaluate.summary_status`, and its failure message): no reconcile needed.
EVALUATOR_FIELDS = (
    "steps",
    "samples",
    "samplesJudged",
    "preferences",
    "agreement",
    "tokens",
    "judges",
    "scoresURI",
    "preferencesURI",
    "completionTime",
    "message",
)
TERMINAL = frozenset({EvaluationPhase.SUCCEEDED, EvaluationPhase.FAILED})
# The evaluator's own failure message starts so (loka_trainer.evaluate); the operator keeps it when the Job fails.
EVALUATOR_FAILURE_PREFIX = "evaluation failed:"
# How often a queued Evaluation reads its Job's Workload again, to keep Kueue's reason current.
QUEUED_LOOK_SECONDS = 15.0
# Lost races in a row before the reconcile gives up (and is retried with backoff like any failed reconcile).
MAX_CONFLICTS = 5


class EvaluationCondition(enum.StrEnum):
    ROLLOUTS_READY = "RolloutsReady"
    SECRETS_READY = "SecretsReady"
    ADMITTED = "Admitted"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ------------------------------------------------------------------------------------------ the source


@dataclass(frozen=True)
class RolloutsState:
    """Where an Evaluation stands with its source run's rollouts."""

    uri: str | None = None  # ready: the folder the evaluator reads
    waiting: Problem | None = None  # not yet
    failed: Problem | None = None  # never


def resolve_rollouts(evaluation: Evaluation, source_body: JSON | None) -> RolloutsState:
    """Pure: the rollouts the Evaluation judges, given its source run as the cache holds it (None: absent)."""
    if evaluation.status.rollouts_uri:
        return RolloutsState(uri=evaluation.status.rollouts_uri)  # recorded before: fixed
    name, namespace = evaluation.spec.rollouts.from_run, evaluation.metadata.namespace
    if source_body is None:
        return RolloutsState(
            waiting=Problem(
                "SourceNotFound", f"waiting for run {name!r} (spec.rollouts.fromRun) to exist in {namespace!r}"
            )
        )
    try:
        source = TrainingRun.model_validate(source_body)
    except ValidationError:
        return RolloutsState(
            failed=Problem("SourceInvalid", f"source run {name!r} does not match the TrainingRun schema")
        )
    if source.spec.rollouts is None:
        return RolloutsState(
            failed=Problem(
                "SourceKeepsNoRollouts",
                f"source run {name!r} keeps no rollouts: set its spec.rollouts (e.g. {{every: 1}}) to evaluate it",
            )
        )
    theirs = source.spec.storage.endpoint if source.spec.storage else None
    ours = evaluation.spec.storage.endpoint if evaluation.spec.storage else None
    if theirs != ours:
        return RolloutsState(
            failed=Problem(
                "SourceStorageMismatch",
                f"source run {name!r} keeps rollouts at S3 endpoint {theirs or 'AWS S3'}, this Evaluation reads "
                f"from {ours or 'AWS S3'} (spec.storage.endpoint must match)",
            )
        )
    phase = source.status.phase
    kept = source.status.rollouts
    uri, step = (kept.uri, kept.step) if kept is not None else (None, None)
    steps = parse_steps(evaluation.spec.rollouts.steps)
    state = f"it is {phase.value if phase else 'Pending'}" + (
        f", rollouts up to step {step}" if step is not None else ", no rollouts yet"
    )
    if isinstance(steps, list):
        last = steps[-1]
        if uri is not None and step is not None and step >= last:
            return RolloutsState(uri=uri)
        if phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
            return RolloutsState(
                failed=Problem(
                    "SourceEnded", f"source run {name!r} ended without the rollouts of step {last} ({state})"
                )
            )
        return RolloutsState(
            waiting=Problem(
                "WaitingForSource", f"waiting for run {name!r} to keep the rollouts of step {last} ({state})"
            )
        )
    assert steps in (ROLLOUT_STEPS_LATEST, ROLLOUT_STEPS_ALL)
    if phase == RunPhase.SUCCEEDED:
        if uri is None:
            return RolloutsState(
                failed=Problem("SourceEnded", f"source run {name!r} succeeded without keeping rollouts")
            )
        return RolloutsState(uri=uri)
    if phase == RunPhase.FAILED:
        why = source.status.message or "no reason given"
        return RolloutsState(failed=Problem("SourceFailed", f"source run {name!r} failed: {why}"))
    return RolloutsState(waiting=Problem("WaitingForSource", f"waiting for run {name!r} to succeed ({state})"))


# -------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class EvaluationObserved:
    """What one reconcile of an Evaluation saw."""

    generation: int
    now: datetime
    invalid: Problem | None = None
    rollouts: RolloutsState | None = None
    missing_secrets: Problem | None = None
    blocked: Problem | None = None
    job: JSON | None = None
    workload: JSON | None = None  # Kueue's Workload for the Job, read while the Job is suspended


def _true_conditions(job: JSON) -> dict[str, dict[str, Any]]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in conditions if c.get("status") == "True"}


def _job_time(job: JSON, key: str) -> datetime | None:
    value = (job.get("status") or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def calculate_evaluation_status(obs: EvaluationObserved, previous: EvaluationStatus) -> EvaluationStatus:
    """The Evaluation's status: the phase from the first thing that holds it back, or from its Job."""
    status = previous.model_copy(deep=True)
    status.observed_generation = obs.generation
    conditions = list(previous.conditions)

    def put(type_: EvaluationCondition, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, ok, reason, message, now=obs.now, generation=obs.generation)

    if previous.phase in TERMINAL:
        return status
    phase: EvaluationPhase
    message: str | None
    rollouts = obs.rollouts
    if obs.invalid is not None:
        phase, message = EvaluationPhase.FAILED, obs.invalid.message
        put(EvaluationCondition.FAILED, True, obs.invalid.reason, message)
    elif rollouts is not None and rollouts.failed is not None:
        phase, message = EvaluationPhase.FAILED, rollouts.failed.message
        put(EvaluationCondition.ROLLOUTS_READY, False, rollouts.failed.reason, message)
        put(EvaluationCondition.FAILED, True, rollouts.failed.reason, message)
    elif rollouts is not None and rollouts.waiting is not None:
        phase, message = EvaluationPhase.PENDING, rollouts.waiting.message
        put(EvaluationCondition.ROLLOUTS_READY, False, rollouts.waiting.reason, message)
    else:
        if rollouts is not None and rollouts.uri is not None:
            status.rollouts_uri = rollouts.uri
            put(EvaluationCondition.ROLLOUTS_READY, True, "RolloutsFound", f"judging {rollouts.uri}")
        phase, message = _from_job(obs, previous, put)
    status.phase = phase
    status.message = message
    status.conditions = conditions
    if obs.job is not None:
        status.job = obs.job["metadata"]["name"]
        status.start_time = status.start_time or _job_time(obs.job, "startTime")
        if phase in TERMINAL:
            status.completion_time = status.completion_time or _job_time(obs.job, "completionTime") or obs.now
    elif phase in TERMINAL:
        status.completion_time = status.completion_time or obs.now
    return status


def _from_job(obs: EvaluationObserved, previous: EvaluationStatus, put: Any) -> tuple[EvaluationPhase, str | None]:
    if obs.missing_secrets is not None:
        put(EvaluationCondition.SECRETS_READY, False, obs.missing_secrets.reason, obs.missing_secrets.message)
        return EvaluationPhase.PENDING, obs.missing_secrets.message
    put(EvaluationCondition.SECRETS_READY, True, "SecretsFound", "every referenced Secret key exists")
    if obs.blocked is not None:
        return EvaluationPhase.PENDING, obs.blocked.message
    job = obs.job
    if job is None:
        return EvaluationPhase.PENDING, "creating the evaluator's Job"
    name = job["metadata"]["name"]
    ended = _true_conditions(job)
    if "Complete" in ended:
        put(EvaluationCondition.SUCCEEDED, True, "JobComplete", f"Job {name} completed")
        return EvaluationPhase.SUCCEEDED, None
    if "Failed" in ended:
        said = cause(ended["Failed"].get("message") or ended["Failed"].get("reason") or "no reason given")
        message = f"Job {name} failed: {said}"
        if previous.message and previous.message.startswith(EVALUATOR_FAILURE_PREFIX):
            message = f"{message}; {previous.message}"
        put(EvaluationCondition.FAILED, True, "JobFailed", message)
        return EvaluationPhase.FAILED, message
    if (job.get("spec") or {}).get("suspend"):
        if obs.workload is None:
            waiting = f"waiting for Kueue to admit Job {name}"
            put(EvaluationCondition.ADMITTED, False, "Queued", waiting)
            return EvaluationPhase.QUEUED, waiting
        wait = kueue_wait_reason(obs.workload)  # in Kueue's own words, as a run's
        put(EvaluationCondition.ADMITTED, False, wait.reason, wait.message)
        return EvaluationPhase.QUEUED, f"waiting for Kueue: {wait.message}"
    put(EvaluationCondition.ADMITTED, True, "Admitted", f"Job {name} may run")
    return EvaluationPhase.RUNNING, None


def status_changes(previous: EvaluationStatus, current: EvaluationStatus) -> dict[str, Any]:
    """A merge patch of this reconciler's fields that changed; empty means nothing to write."""
    before = previous.model_dump(mode="json", by_alias=True)
    after = current.model_dump(mode="json", by_alias=True)
    return {key: after.get(key) for key in OPERATOR_FIELDS if before.get(key) != after.get(key)}


# ------------------------------------------------------------------------------------------ reconcile


@dataclass
class EvaluationReconciler:
    """Reconciles Evaluations; it shares the run reconciler's client, config, run cache (the source runs), Secret
    check and LocalQueues."""

    runs: Reconciler
    ledger: WriteLedger = field(default_factory=WriteLedger)
    cache: RunCache = field(init=False)
    children: Children = field(init=False)
    # Evaluations waiting for a source run's rollouts: the source's watch events reconcile them.
    waiters: lineage.SourceWaiters = field(default_factory=lineage.SourceWaiters)

    def __post_init__(self) -> None:
        self.cache = RunCache(self.ledger, kind=kinds.EVALUATION, reporter_fields=EVALUATOR_FIELDS)
        self.children = Children(self.ledger)

    @property
    def client(self) -> KubeClient:
        return self.runs.client

    def forget(self, key: str) -> None:
        self.cache.forget(key)
        self.children.forget(key)
        self.waiters.done(key)
        self.runs.metrics.observe_evaluation_phase(key, None)

    def dependents(self, run_key: str) -> list[str]:
        """The Evaluations waiting for run ``run_key``'s rollouts."""
        return self.waiters.dependents(run_key)

    async def reconcile(self, namespace: str, name: str, *, drift: bool = False) -> Outcome:
        from loka_operator.reconcile import Outcome

        key = naming.run_key(namespace, name)
        body = self.cache.run(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome()
        generation = int(body["metadata"].get("generation") or 0)
        try:
            evaluation = Evaluation.model_validate(body)
        except ValidationError as error:
            previous = EvaluationStatus.model_validate(body.get("status") or {})
            invalid = Problem("InvalidSpec", f"spec does not match the Evaluation schema: {error}")
            await self._write_status(body, previous, EvaluationObserved(generation, now(), invalid=invalid))
            return Outcome(phase=EvaluationPhase.FAILED.value)
        previous, spec, uid = evaluation.status, evaluation.spec, evaluation.metadata.uid
        job, blocked = self._current(EVALUATION_JOB, key, naming.evaluation_job_name(name), uid, name)
        requeue: float | None = None
        rollouts = missing = None
        if previous.phase not in TERMINAL:
            rollouts = self._resolve_rollouts(key, evaluation)
            if rollouts.uri is not None and job is None and blocked is None:
                wanted = secret_routes.wanted(secret_routes.of_evaluation(spec))
                missing = await self.runs.missing_secrets(namespace, wanted) or await self._missing_rubrics(evaluation)
                if missing is not None:
                    requeue = self.runs.config.secret_retry_seconds
                elif previous.rollouts_uri is None:
                    requeue = 0.0  # record status.rolloutsURI first: the evaluator reads it from there
                else:
                    job, blocked = await self._launch(evaluation)
            if blocked is not None:
                requeue = self.runs.config.refused_retry_seconds
        workload = await self._workload(namespace, job) if previous.phase not in TERMINAL else None
        observed = EvaluationObserved(
            generation, now(), rollouts=rollouts, missing_secrets=missing, blocked=blocked, job=job, workload=workload
        )
        status = await self._write_status(body, previous, observed)
        phase = status.phase if status is not None else previous.phase
        if phase == EvaluationPhase.QUEUED:
            requeue = QUEUED_LOOK_SECONDS if requeue is None else min(requeue, QUEUED_LOOK_SECONDS)
        return Outcome(requeue_after=requeue, phase=phase.value if phase else None)

    async def _workload(self, namespace: str, job: JSON | None) -> JSON | None:
        """Kueue's Workload for a suspended Job (None: the Job runs, or Kueue has not made one yet)."""
        if job is None or not (job.get("spec") or {}).get("suspend") or not job["metadata"].get("uid"):
            return None
        selector = f"{JOB_UID_LABEL}={job['metadata']['uid']}"
        found: list[JSON] = await self.client.list(kinds.WORKLOAD, namespace, label_selector=selector)
        return workload_of(found, job)

    async def _missing_rubrics(self, evaluation: Evaluation) -> Problem | None:
        """A judge's rubric ConfigMap key that is not there would hold the pod in ContainerCreating: wait, naming it."""
        namespace, missing = evaluation.metadata.namespace, []
        for judge in evaluation.spec.judges:
            ref = judge.rubric.config_map if judge.rubric is not None else None
            if ref is None:
                continue
            found = await self.client.get(kinds.CONFIG_MAP, namespace, ref.name)
            if found is None:
                missing.append(f"ConfigMap {ref.name!r} (judges[{judge.name}].rubric) does not exist")
            elif ref.key not in (found.get("data") or {}):
                missing.append(f"ConfigMap {ref.name!r} has no key {ref.key!r} (judges[{judge.name}].rubric)")
        if not missing:
            return None
        return Problem("RubricMissing", "waiting for " + "; ".join(missing) + f" in namespace {namespace!r}")

    def _resolve_rollouts(self, key: str, evaluation: Evaluation) -> RolloutsState:
        source_key = naming.run_key(evaluation.metadata.namespace, evaluation.spec.rollouts.from_run)
        source = self.runs.cache.run(source_key)
        if source is not None and source["metadata"].get("deletionTimestamp"):
            source = None
        state = resolve_rollouts(evaluation, source)
        if state.waiting is not None:
            self.waiters.wait(key, source_key)
        else:
            self.waiters.done(key)
        return state

    async def _launch(self, evaluation: Evaluation) -> tuple[JSON | None, Problem | None]:
        """The LocalQueue, the evaluator's identity, then its Job."""
        meta, spec = evaluation.metadata, evaluation.spec
        if spec.queue is not None:
            await self.runs.ensure_local_queue(spec.queue, meta.namespace)
        account, role, binding = build_evaluator_identity(meta.name, meta.namespace, meta.uid)
        for problem in (
            (await self._ensure(EVALUATOR_SERVICE_ACCOUNT, evaluation, account))[1],
            (await self._ensure(EVALUATOR_ROLE, evaluation, role))[1],
            (await self._ensure(EVALUATOR_ROLE_BINDING, evaluation, binding))[1],
        ):
            if problem is not None:
                return None, problem
        job = build_evaluation_job(
            spec,
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            service_account=naming.evaluator_account_name(meta.name),
        )
        created, problem = await self._ensure(EVALUATION_JOB, evaluation, job)
        if created is not None and problem is None:
            log.info("created Job %s/%s for Evaluation %s", meta.namespace, job["metadata"]["name"], meta.name)
        return created, problem

    async def _ensure(
        self, child: ChildKind, evaluation: Evaluation, manifest: JSON
    ) -> tuple[JSON | None, Problem | None]:
        """The Evaluation's own child: as cached, or created; a name taken by someone else is never touched."""
        meta = evaluation.metadata
        key, name = naming.run_key(meta.namespace, meta.name), manifest["metadata"]["name"]
        existing, problem = self._current(child, key, name, meta.uid, meta.name)
        if existing is not None or problem is not None:
            return existing, problem
        try:
            created = await self.client.create(child.kind, meta.namespace, manifest)
        except ApiError as error:
            if error.refused:
                return None, Problem(
                    "CreateRefused", f"the API server refused to create the {child.name} {name}: {error.message}"
                )
            if error.status != 409:
                raise
            taken = await self.client.get(child.kind, meta.namespace, name)
            if taken is None:
                raise  # deleted meanwhile: the retry creates it
            return _claimed(child.name, taken, meta.name, meta.uid)
        self.children.wrote(child, key, created)
        return created, None

    def _current(
        self, child: ChildKind, key: str, name: str, uid: str, evaluation: str
    ) -> tuple[JSON | None, Problem | None]:
        found = self.children.get(child, key, name)
        return (None, None) if found is None else _claimed(child.name, found, evaluation, uid)

    async def _write_status(
        self, body: JSON, previous: EvaluationStatus, observed: EvaluationObserved
    ) -> EvaluationStatus | None:
        """Write this reconciler's fields when they changed, conditional on the version they were calculated from
        (a write that lost the race is calculated again from what the Evaluation now is), so that each transition
        lands, is posted as an Event and counted once."""
        meta = body["metadata"]
        key = naming.run_key(meta["namespace"], meta["name"])
        for _ in range(MAX_CONFLICTS):
            current = calculate_evaluation_status(observed, previous)
            changes = status_changes(previous, current)
            if not changes:
                self.runs.metrics.observe_evaluation_phase(key, current.phase.value if current.phase else None)
                return current
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": changes}
            try:
                written = await self.client.merge_patch(
                    kinds.EVALUATION, meta["namespace"], meta["name"], patch, subresource="status"
                )
            except ApiError as error:
                if error.status == 404:
                    self.forget(key)
                    return None
                if error.status != 409:
                    raise
                fresh = await self.client.get(kinds.EVALUATION, meta["namespace"], meta["name"])
                if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
                    self.forget(key)
                    return None
                body, meta = fresh, fresh["metadata"]
                previous = EvaluationStatus.model_validate(fresh.get("status") or {})
                continue
            self.cache.wrote(written)
            self._landed(key, body, previous, current)
            return current
        raise ApiError(409, "Conflict", f"status of Evaluation {key}: {MAX_CONFLICTS} writes in a row lost the race")

    def _landed(self, key: str, body: JSON, previous: EvaluationStatus, current: EvaluationStatus) -> None:
        """What a transition does once its write landed (and only then): the metrics, the Event, the log line."""
        phase = current.phase
        self.runs.metrics.observe_evaluation_phase(key, phase.value if phase else None)
        if phase == previous.phase or phase is None:
            return
        if phase in TERMINAL and current.start_time is not None and current.completion_time is not None:
            ran = (current.completion_time - current.start_time).total_seconds()
            self.runs.metrics.evaluation_seconds.labels(phase=phase.value).observe(max(ran, 0.0))
        said = current.message or _phase_words(phase, current)
        event = PhaseEvent("Warning" if phase == EvaluationPhase.FAILED else "Normal", phase.value, brief(said))
        involved = {"apiVersion": kinds.EVALUATION.api_version, "kind": kinds.EVALUATION.kind, **body}
        self.runs.status.events.post_soon(involved, event)
        log.info("evaluation %s: %s -> %s", key, previous.phase, phase)


def _phase_words(phase: EvaluationPhase, status: EvaluationStatus) -> str:
    """What an Event says of a phase the status gives no message for."""
    if phase == EvaluationPhase.SUCCEEDED:
        return f"judged {status.samples_judged or 0} samples into {status.preferences or 0} preference pairs"
    if phase == EvaluationPhase.RUNNING:
        return f"Kueue admitted Job {status.job}; the evaluator runs"
    return f"the Evaluation is {phase.value}"


def _claimed(kind: str, obj: JSON, evaluation: str, uid: str) -> tuple[JSON | None, Problem | None]:
    name = obj["metadata"]["name"]
    match claim(obj, evaluation, uid, owner_kind=kinds.EVALUATION):
        case Claim.OURS:
            return obj, None
        case Claim.PREVIOUS_RUN:
            return None, Problem(
                "WaitingForPreviousEvaluation",
                f"the {kind} {name} still belongs to an earlier Evaluation named {evaluation!r}; "
                "waiting for garbage collection to remove it",
            )
        case _:
            return None, Problem(
                "NameConflict",
                f"a {kind} named {name!r} already exists and is not owned by this Evaluation; delete it or rename "
                "the Evaluation",
            )
