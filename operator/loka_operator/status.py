"""The one place that maps observed child state to a run's phase and conditions.

`calculate_status` is pure: given what reconcile observed (validation, the source run of
spec.model.fromRun, secrets, the RayJob and Kueue's Workload) and the stored status, it returns
the next status. `decide_phase` is an explicit state machine over the RayJob's
`jobDeploymentStatus`, with Kueue's Workload saying why a run waits. Only operator-owned fields
are computed; the trainer's progress, metrics, checkpoint and wandbURL are carried over untouched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loka_api import (
    AttemptRecord,
    CheckpointPin,
    Condition,
    ConditionType,
    Interruption,
    RewardModelSource,
    RunPhase,
    SourceStatus,
    TrainDataStatus,
    TrainerFailure,
    TrainingRunStatus,
)
from loka_api import kueue as workloads
from loka_api.contract import OPERATOR_STATUS_FIELDS
from loka_api.phases import ACTIVE, ATTEMPT_ENDING, TERMINAL
from loka_operator.interruptions import account, opened_and_settled
from loka_operator.kueue import deactivated_by_us
from loka_operator.messages import brief
from loka_operator.naming import LABEL_RUN

# What each phase means (terminal, active, ending an attempt) is the core's (loka_api.phases). Retries after a
# failure are counted from KubeRay's own counter instead of ATTEMPT_ENDING: they can pass unobserved.
# Kueue's Workload conditions that mean Kueue took an admitted run's quota away.
KUEUE_PREEMPTION = (workloads.PREEMPTED, workloads.EVICTED)
# Kueue's reason (and reason prefix, e.g. DeactivatedDueToRequeuingLimitExceeded) for an inactive Workload.
DEACTIVATED = "Deactivated"

# Kueue holds the run's RayJob (suspended) but no Workload for it shows up (`workload_not_seen`).
WORKLOAD_NOT_SEEN = "WorkloadNotSeen"

# The run passed spec.deadline (loka_operator.deadline): it ends Failed with this reason.
DEADLINE_EXCEEDED = "DeadlineExceeded"

# KubeRay jobDeploymentStatus values (ray-operator apis/ray/v1/rayjob_types.go).
RJ_NEW = ""
RJ_INITIALIZING = "Initializing"
RJ_RUNNING = "Running"
RJ_COMPLETE = "Complete"
RJ_FAILED = "Failed"
RJ_VALIDATION_FAILED = "ValidationFailed"
RJ_SUSPENDING = "Suspending"
RJ_SUSPENDED = "Suspended"
RJ_RETRYING = "Retrying"
RJ_WAITING = "Waiting"


@dataclass(frozen=True)
class Problem:
    """Why a run cannot proceed, in words a user can act on."""

    reason: str
    message: str


@dataclass(frozen=True)
class SourceState:
    """The run named by spec.model.fromRun, as reconcile found it (loka_operator.lineage)."""

    source: SourceStatus  # what status.source records: the run and its uid, then the checkpoint once ready
    waiting: Problem | None = None  # the checkpoint does not exist yet
    failed: Problem | None = None  # it never will (the source failed, was deleted, keeps no checkpoints...)

    @property
    def ready(self) -> bool:
        return self.waiting is None and self.failed is None and self.source.uri is not None

    def launchable(self, recorded: SourceStatus | None) -> bool:
        """The checkpoint exists and status.source already records it: the trainer will find it there."""
        return self.ready and self.source == recorded


@dataclass(frozen=True)
class RewardModelState:
    """A reward component's rewardModel.fromRun, as reconcile found it (the same lineage as spec.model.fromRun)."""

    component: str
    state: SourceState

    @property
    def record(self) -> RewardModelSource:
        """What status.rewardModels records of it."""
        return RewardModelSource(component=self.component, **self.state.source.model_dump())

    def launchable(self, recorded: list[RewardModelSource]) -> bool:
        """The checkpoint exists and status.rewardModels already records it: its server can be built."""
        return self.state.ready and self.record in recorded


@dataclass(frozen=True)
class TrainDataState:
    """The Evaluation named by spec.data.fromEvaluation, as reconcile found it (loka_operator.evaluations)."""

    data: TrainDataStatus  # what status.trainData records: the Evaluation, then its uid and preferences once ready
    waiting: Problem | None = None  # it has not succeeded yet
    failed: Problem | None = None  # it never will (it failed, wrote no pairs...)

    @property
    def ready(self) -> bool:
        return self.waiting is None and self.failed is None and self.data.uri is not None

    def launchable(self, recorded: TrainDataStatus | None) -> bool:
        """The pairs exist and status.trainData already records them: the trainer will find them there."""
        return self.ready and self.data == recorded


@dataclass(frozen=True)
class Observed:
    """What one reconcile saw."""

    generation: int
    suspend: bool
    queued: bool
    now: datetime
    invalid: Problem | None = None
    source: SourceState | None = None  # only for runs with spec.model.fromRun that have not launched
    train_data: TrainDataState | None = None  # only for runs with spec.data.fromEvaluation that have not launched
    # Only for runs that serve reward models (rewardModel.fromRun) and have not launched.
    reward_models: tuple[RewardModelState, ...] | None = None
    missing_secrets: Problem | None = None
    # A child could not be created: its name is taken (NameConflict), an earlier run of the same name still
    # owns it (WaitingForPreviousRun), or the API server refused it (CreateRefused).
    blocked: Problem | None = None
    rayjob: dict[str, Any] | None = None
    workload: dict[str, Any] | None = None
    gpus: int = 0  # the run's GPUs (workers x gpusPerWorker): what an interruption's lost steps cost
    pins: tuple[CheckpointPin, ...] | None = None  # this run's checkpoints its dependents need (None: unchanged)
    deadline: Problem | None = None  # spec.deadline passed and no attempt runs any more (loka_operator.deadline)
    # Kueue holds the RayJob, and no Workload the operator can see came for it for a long while (workload_not_seen)
    no_workload: Problem | None = None


@dataclass(frozen=True)
class Verdict:
    phase: RunPhase
    reason: str
    message: str


@dataclass(frozen=True)
class PhaseEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusUpdate:
    status: TrainingRunStatus
    previous_phase: RunPhase | None
    event: PhaseEvent | None = None
    left_queue_after: float | None = None  # seconds spent Queued, when the run just left the queue
    changes: dict[str, Any] = field(default_factory=dict)
    interrupted: list[Interruption] = field(default_factory=list)  # opened by this update
    settled: list[Interruption] = field(default_factory=list)  # costed by this update
    write_in: float | None = None  # seconds until the words only this update changes are written (not yet written)


# ------------------------------------------------------------------------------ Kueue's Workload


def _deactivation(workload: dict[str, Any]) -> Problem:
    """Kueue's or an admin's deactivation, in Kueue's words, with what brings the run back."""
    meta = workload.get("metadata", {})
    evicted = workloads.conditions(workload).get(workloads.EVICTED, {})
    if evicted.get("status") == "True" and str(evicted.get("reason", "")).startswith(DEACTIVATED):
        reason, said = evicted.get("reason", DEACTIVATED), evicted.get("message", "")
    else:
        reason, said = DEACTIVATED, workloads.conditions(workload).get(workloads.QUOTA_RESERVED, {}).get("message", "")
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    return Problem(
        reason,
        f"the Workload {name} was deactivated outside Loka ({said or 'spec.active is false'}); Loka does not "
        f"reactivate it: kubectl -n {namespace} patch workload {name} --type=merge "
        f'-p \'{{"spec":{{"active":true}}}}\'',
    )


def workload_not_seen(
    rayjob: dict[str, Any] | None, selector: str, grace: float, now: datetime
) -> tuple[Problem | None, float | None]:
    """A queued run's RayJob that Kueue holds (suspended) with no Workload in sight: once that lasted `grace` seconds,
    what to check, the setting that hides Kueue's Workloads from the operator first; else seconds until then."""
    held = bool(((rayjob or {}).get("spec") or {}).get("suspend"))
    created = str(((rayjob or {}).get("metadata") or {}).get("creationTimestamp") or "")
    if rayjob is None or not held or not created:
        return None, None
    left = grace - (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    if left > 0:
        return None, left + 1
    if selector:
        why = (
            f"the operator watches only Workloads matching --workload-selector={selector}, and Kueue labels a "
            f"Workload so only when its Configuration lists integrations.labelKeysToCopy: [{LABEL_RUN}]; add that "
            "to Kueue's Configuration and restart Kueue, or run the operator with --workload-selector= (chart: "
            'kueue.workloadSelector: "") to watch every Workload'
        )
    else:
        why = "check that Kueue is running and that its Configuration lists ray.io/rayjob in integrations.frameworks"
    name = rayjob["metadata"].get("name", "")
    said = f"Kueue holds the RayJob {name}, but no Workload for it appeared within {grace:.0f} s: {why}"
    return Problem(WORKLOAD_NOT_SEEN, said), None


def kueue_wait_reason(workload: dict[str, Any] | None) -> Problem:
    """Why Kueue holds the workload, in Kueue's own words (deactivation, eviction/preemption first, then quota)."""
    if workload is None:
        return Problem("WorkloadPending", "waiting for Kueue to create the Workload for the RayJob")
    conditions = workloads.conditions(workload)
    if workload.get("spec", {}).get("active") is False:
        if deactivated_by_us(workload):
            return Problem(DEACTIVATED, "the Workload is deactivated because the run is suspended")
        return _deactivation(workload)
    for kind in KUEUE_PREEMPTION:
        cond = conditions.get(kind)
        # An Evicted condition left from a deactivation that was undone since: the Workload waits for quota again.
        if cond and cond.get("status") == "True" and not str(cond.get("reason", "")).startswith(DEACTIVATED):
            return Problem(f"{kind}{cond.get('reason', '')}", cond.get("message", ""))
    for kind in (workloads.QUOTA_RESERVED, workloads.ADMITTED):
        cond = conditions.get(kind)
        if cond and cond.get("status") == "False":
            if str(cond.get("reason", "")).startswith(DEACTIVATED):  # written before it was reactivated
                return Problem("Reactivated", "the Workload was reactivated; waiting for Kueue to admit it")
            return Problem(cond.get("reason") or "Pending", cond.get("message", ""))
    if workloads.admitted(workload):
        return Problem("AdmittedNotStarted", "admitted; waiting for Kueue to unsuspend the RayJob")
    return Problem("Pending", "waiting for Kueue to admit the Workload")


# ---------------------------------------------------------------------------- the state machine


def _kueue_wait(obs: Observed) -> Problem:
    if obs.workload is None and obs.no_workload is not None:
        return obs.no_workload
    return kueue_wait_reason(obs.workload)


def rejected(status: TrainingRunStatus) -> bool:
    """The run failed validation: nothing was launched, and a fixed spec may still start it."""
    return any(c.type == ConditionType.VALID.value and c.status == "False" for c in status.conditions)


def finished(status: TrainingRunStatus) -> bool:
    """The run ran to an end; its RayJob is never recreated."""
    return status.phase in TERMINAL and not rejected(status)


def _rayjob_status(rayjob: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = rayjob.get("status") or {}
    return status


def decide_phase(obs: Observed, previous: TrainingRunStatus) -> Verdict:
    """Every phase and every transition of a run, in one place."""
    prev = previous.phase
    if obs.invalid is not None:
        return Verdict(RunPhase.FAILED, obs.invalid.reason, obs.invalid.message)
    if prev not in TERMINAL and (failure := permanent_failure(previous)) is not None:
        # No retry on a new Ray cluster could help: the run ends now, whatever KubeRay would do next.
        return Verdict(RunPhase.FAILED, failure.reason, previous.message or f"the trainer failed: {failure.reason}")
    if obs.deadline is not None and (prev not in TERMINAL or _ended_by(previous, DEADLINE_EXCEEDED)):
        return Verdict(RunPhase.FAILED, obs.deadline.reason, obs.deadline.message)
    if obs.rayjob is None:
        if finished(previous) and prev is not None:
            # The run ended (or its source failed it) and its RayJob, if any, was removed after the TTL: it keeps
            # the reason it ended with.
            ended = _ending_condition(previous)
            if ended is not None:
                return Verdict(prev, ended.reason, ended.message)
            return Verdict(prev, "Finished", previous.message or f"the run {prev.lower()}")
        source, data = obs.source, obs.train_data
        if source is not None and source.failed is not None:
            return Verdict(RunPhase.FAILED, source.failed.reason, source.failed.message)
        if data is not None and data.failed is not None:
            return Verdict(RunPhase.FAILED, data.failed.reason, data.failed.message)
        served = obs.reward_models or ()
        if (failed := next((rm.state.failed for rm in served if rm.state.failed), None)) is not None:
            return Verdict(RunPhase.FAILED, failed.reason, failed.message)
        if obs.missing_secrets is not None:
            return Verdict(RunPhase.PENDING, obs.missing_secrets.reason, obs.missing_secrets.message)
        if obs.blocked is not None:
            return Verdict(RunPhase.PENDING, obs.blocked.reason, obs.blocked.message)
        if obs.suspend:
            return Verdict(RunPhase.SUSPENDED, "Suspended", "suspended by spec.suspend before it started")
        if source is not None and source.waiting is not None:
            return Verdict(RunPhase.PENDING, source.waiting.reason, source.waiting.message)
        if source is not None and source.ready and source.source != previous.source:
            return Verdict(RunPhase.PENDING, "SourceReady", _source_ready_message(source.source))
        if data is not None and data.waiting is not None:
            return Verdict(RunPhase.PENDING, data.waiting.reason, data.waiting.message)
        if data is not None and data.ready and data.data != previous.train_data:
            return Verdict(RunPhase.PENDING, "TrainDataReady", f"training on {data.data.uri}")
        if (waiting := next((rm.state.waiting for rm in served if rm.state.waiting), None)) is not None:
            return Verdict(RunPhase.PENDING, waiting.reason, waiting.message)
        if any(rm.state.ready and rm.record not in previous.reward_models for rm in served):
            return Verdict(RunPhase.PENDING, "RewardModelsReady", _reward_models_message(served))
        return Verdict(RunPhase.PENDING, "CreatingRayJob", "creating the RayJob")

    status = _rayjob_status(obs.rayjob)
    deployment = status.get("jobDeploymentStatus", RJ_NEW) or RJ_NEW
    job_status = status.get("jobStatus", "") or ""
    reason = status.get("reason", "") or ""
    message = status.get("message", "") or ""
    restarting = (previous.attempt or 1) > 1 or bool(_restarts(obs.rayjob))

    match deployment:
        case "Complete":
            if job_status == "SUCCEEDED":
                return Verdict(RunPhase.SUCCEEDED, "RayJobSucceeded", message or "the Ray job succeeded")
            return Verdict(
                RunPhase.FAILED, f"RayJob{job_status.title() or 'Stopped'}", message or "the Ray job stopped"
            )
        case "Failed" | "ValidationFailed":
            return Verdict(RunPhase.FAILED, reason or deployment, message or f"the RayJob {deployment.lower()}")
        case "Suspending" | "Suspended":
            if obs.suspend:
                return Verdict(
                    RunPhase.SUSPENDED, "Suspended", "suspended by spec.suspend; the Ray cluster is released"
                )
            wait = _kueue_wait(obs) if obs.queued else Problem("Resuming", "resuming the RayJob")
            if not obs.queued:
                return Verdict(RunPhase.RESUMING, wait.reason, wait.message)
            return _waiting_for_kueue(wait)
        case "Retrying":
            return Verdict(RunPhase.RESUMING, "Retrying", message or "KubeRay is retrying the run on a new Ray cluster")
        case "Running":
            return Verdict(RunPhase.RUNNING, "RayJobRunning", "the Ray cluster is up and the trainer was submitted")
        case _:  # New, Initializing, Waiting
            # Until Kueue unsuspends the RayJob, KubeRay only cycles it through Suspending: nothing starts.
            if obs.suspend:
                return Verdict(RunPhase.SUSPENDED, "Suspending", "suspending: the Ray cluster is being released")
            held = bool((obs.rayjob.get("spec") or {}).get("suspend", False))
            if obs.queued and (held or not workloads.admitted(obs.workload)):
                return _waiting_for_kueue(_kueue_wait(obs))
            if restarting:
                return Verdict(RunPhase.RESUMING, "StartingRayCluster", "starting a new Ray cluster for the run")
            return Verdict(RunPhase.STARTING, "StartingRayCluster", "starting the Ray cluster")


def _ending_condition(status: TrainingRunStatus) -> Condition | None:
    """The Succeeded or Failed condition that says why a finished run ended."""
    kind = ConditionType.SUCCEEDED if status.phase == RunPhase.SUCCEEDED else ConditionType.FAILED
    return next((c for c in status.conditions if c.type == kind.value and c.status == "True"), None)


def _ended_by(status: TrainingRunStatus, reason: str) -> bool:
    ended = _ending_condition(status)
    return status.phase in TERMINAL and ended is not None and ended.reason == reason


def _source_ready_message(source: SourceStatus) -> str:
    return f"starting from checkpoint step {source.step} of run {source.run!r} ({source.uri})"


def _waiting_for_kueue(wait: Problem) -> Verdict:
    """Queued for quota; Suspended (in Kueue's words) when Kueue preempted, evicted or deactivated the run."""
    if wait.reason.startswith(DEACTIVATED):
        return Verdict(RunPhase.SUSPENDED, wait.reason, wait.message)
    if wait.reason.startswith(KUEUE_PREEMPTION):
        return Verdict(RunPhase.SUSPENDED, wait.reason, f"suspended by Kueue: {wait.message}")
    return Verdict(RunPhase.QUEUED, wait.reason, f"waiting for Kueue: {wait.message}")


# ------------------------------------------------------------------------------------ conditions


def set_condition(
    conditions: list[Condition],
    type_: enum.StrEnum,
    status: bool,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int,
) -> list[Condition]:
    """metav1 semantics: lastTransitionTime moves only when the status flips."""
    wanted = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_.value:
            out.append(cond)
            continue
        found = True
        moved = cond.status != wanted
        out.append(
            Condition(
                type=type_.value,
                status=wanted,
                reason=reason,
                message=message,
                last_transition_time=now if moved else cond.last_transition_time or now,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_.value,
                status=wanted,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out


def _cluster_ready(rayjob: dict[str, Any] | None) -> tuple[bool, str, str]:
    if rayjob is None:
        return False, "NoRayJob", "the RayJob does not exist"
    status = _rayjob_status(rayjob)
    deployment = status.get("jobDeploymentStatus", "") or "New"
    state = (status.get("rayClusterStatus") or {}).get("state", "")
    if deployment == RJ_RUNNING or state == "ready":
        return True, "RayClusterReady", f"Ray cluster {status.get('rayClusterName', '')} is ready"
    return False, f"RayJob{deployment}", f"RayJob is {deployment}; Ray cluster state {state or 'unknown'}"


def _reward_models_message(served: tuple[RewardModelState, ...]) -> str:
    each = [f"{rm.component}: step {rm.state.source.step} of run {rm.state.source.run!r}" for rm in served]
    return "serving the reward models " + "; ".join(each)


def _reward_models_ready(served: tuple[RewardModelState, ...]) -> tuple[bool, str, str]:
    problem = next((rm.state.failed or rm.state.waiting for rm in served if not rm.state.ready), None)
    if problem is not None:
        return False, problem.reason, problem.message
    return True, "RewardModelsReady", _reward_models_message(served)


def _source_ready(state: SourceState) -> tuple[bool, str, str]:
    problem = state.failed or state.waiting
    if problem is not None:
        return False, problem.reason, problem.message
    return True, "SourceReady", _source_ready_message(state.source)


def _admitted(obs: Observed) -> tuple[bool, str, str]:
    if not obs.queued:
        return True, "NoQueue", "the run names no Kueue queue; the RayJob is not held by Kueue"
    wait = _kueue_wait(obs)
    # Kueue marks eviction before it drops Admitted: an evicted Workload is no longer admitted for the run.
    taken_away = wait.reason.startswith((*KUEUE_PREEMPTION, DEACTIVATED))
    if workloads.admitted(obs.workload) and not taken_away:
        cond = workloads.conditions(obs.workload)[workloads.ADMITTED]
        return True, cond.get("reason") or "Admitted", cond.get("message", "")
    return False, wait.reason, wait.message


def _conditions_for(obs: Observed, verdict: Verdict, previous: TrainingRunStatus) -> list[Condition]:
    conditions = list(previous.conditions)
    kw: dict[str, Any] = {"now": obs.now, "generation": obs.generation}

    def put(type_: ConditionType, status: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, brief(message), **kw)

    if obs.invalid is not None:
        put(ConditionType.VALID, False, obs.invalid.reason, obs.invalid.message)
    else:
        put(ConditionType.VALID, True, "Validated", "the spec is valid and its verl arguments compose")
    if obs.source is not None:
        put(ConditionType.SOURCE_READY, *_source_ready(obs.source))
    if obs.reward_models:
        put(ConditionType.REWARD_MODELS_READY, *_reward_models_ready(obs.reward_models))
    if obs.missing_secrets is not None:
        put(ConditionType.SECRETS_READY, False, obs.missing_secrets.reason, obs.missing_secrets.message)
    elif obs.invalid is None:
        put(ConditionType.SECRETS_READY, True, "SecretsFound", "every referenced Secret and key exists")
    if obs.invalid is None and obs.rayjob is not None:
        name = obs.rayjob["metadata"]["name"]
        put(ConditionType.LAUNCHED, True, "RayJobCreated", f"the RayJob {name} and the trainer's identity exist")
    elif obs.invalid is None and obs.blocked is not None:
        put(ConditionType.LAUNCHED, False, obs.blocked.reason, obs.blocked.message)
    if obs.invalid is None and (obs.rayjob is not None or verdict.phase not in TERMINAL):
        put(ConditionType.ADMITTED, *_admitted(obs))
        put(ConditionType.CLUSTER_READY, *_cluster_ready(obs.rayjob))
    running = verdict.phase == RunPhase.RUNNING
    put(ConditionType.TRAINING, running, verdict.reason if not running else "Training", verdict.message)
    checkpoint = previous.checkpoint
    if checkpoint is not None and checkpoint.step is not None:
        put(ConditionType.CHECKPOINT_SAVED, True, "CheckpointSaved", f"step {checkpoint.step} at {checkpoint.uri}")
    else:
        put(ConditionType.CHECKPOINT_SAVED, False, "NoCheckpointYet", "no checkpoint has been saved yet")
    succeeded = verdict.phase == RunPhase.SUCCEEDED
    put(ConditionType.SUCCEEDED, succeeded, verdict.reason if succeeded else "NotSucceeded", verdict.message)
    failed = verdict.phase == RunPhase.FAILED
    put(ConditionType.FAILED, failed, verdict.reason if failed else "NotFailed", verdict.message if failed else "")
    suspended = verdict.phase == RunPhase.SUSPENDED
    put(ConditionType.SUSPENDED, suspended, verdict.reason if suspended else "NotSuspended", verdict.message)
    order = {t.value: i for i, t in enumerate(ConditionType)}
    return sorted(conditions, key=lambda c: order.get(c.type, len(order)))


# ---------------------------------------------------------------------------------- calculation


def _restarts(rayjob: dict[str, Any] | None) -> int | None:
    """KubeRay's retries so far: its failure count, less the final failure of a RayJob that gave up."""
    if rayjob is None:
        return None
    status = _rayjob_status(rayjob)
    failed = int(status.get("failed") or 0)
    return max(failed - 1, 0) if status.get("jobDeploymentStatus") == RJ_FAILED else failed


def _next_attempt(previous: TrainingRunStatus, phase: RunPhase, restarts: int | None) -> int | None:
    attempt = previous.attempt
    if attempt is None:
        return None if restarts is None else 1 + restarts
    if previous.phase in ACTIVE and phase in ATTEMPT_ENDING and phase != previous.phase:
        attempt += 1
    # Each KubeRay retry is a new attempt, counted once even when the Retrying state went unseen.
    return attempt + max((restarts or 0) - (previous.restarts or 0), 0)


def _dashboard_url(status: dict[str, Any]) -> str | None:
    url = status.get("dashboardURL") or None
    if url and "://" not in url:
        url = f"http://{url}"
    return url


def _launched(status: TrainingRunStatus) -> Condition:
    found = next((c for c in status.conditions if c.type == ConditionType.LAUNCHED.value), None)
    return found or Condition(type=ConditionType.LAUNCHED.value, status="Unknown")


MAX_ATTEMPT_RECORDS = 16


def record_attempt(
    attempts: list[AttemptRecord], attempt: int, job_id: str, cluster: str | None, now: datetime
) -> list[AttemptRecord]:
    """The attempt history with this attempt's Ray job in it (newest last, the oldest dropped past the bound)."""
    if attempts and attempts[-1].ray_job_id == job_id:
        return attempts
    record = AttemptRecord(attempt=attempt, ray_job_id=job_id, ray_cluster=cluster, start_time=now)
    kept = [a for a in attempts if a.attempt != attempt]  # a resubmission within one attempt replaces it
    return [*kept, record][-MAX_ATTEMPT_RECORDS:]


def _message(previous: TrainingRunStatus, verdict: Verdict) -> str | None:
    """The operator explains waits; during and at the end of an active attempt the trainer's words win."""
    if verdict.phase in ACTIVE:
        return previous.message if verdict.phase == previous.phase else None
    # The deadline's words win over the trainer's last: they say why a run that was training ends.
    trainer_spoke = previous.phase in ACTIVE and bool(previous.message) and verdict.reason != DEADLINE_EXCEEDED
    if verdict.phase in TERMINAL and (verdict.phase == previous.phase or trainer_spoke):
        return previous.message
    return brief(verdict.message)


def permanent_failure(status: TrainingRunStatus) -> TrainerFailure | None:
    """The trainer's report that the current attempt failed for good (a missing input, a broken reward, ...)."""
    failure = status.failure
    if failure is not None and failure.permanent and failure.attempt == (status.attempt or 1):
        return failure
    return None


def _trainers_cause(previous: TrainingRunStatus) -> str | None:
    """What the trainer said during the attempt that just ended (the operator never writes message then)."""
    return previous.message if previous.phase in ACTIVE and previous.message else None


def _lineage(status: TrainingRunStatus, obs: Observed) -> None:
    """The checkpoint the run starts from, and its own checkpoints that runs starting from it still need."""
    if obs.source is not None:
        status.source = obs.source.source
    if obs.pins is not None:
        status.pins = list(obs.pins)
    if obs.train_data is not None:
        status.train_data = obs.train_data.data
    if obs.reward_models is not None:
        status.reward_models = [rm.record for rm in obs.reward_models]


def calculate_status(obs: Observed, previous: TrainingRunStatus) -> StatusUpdate:
    verdict = decide_phase(obs, previous)
    restarts = _restarts(obs.rayjob)
    retried = restarts is not None and restarts > (previous.restarts or 0) and verdict.phase not in TERMINAL
    if (verdict.phase == RunPhase.FAILED and verdict.reason != DEADLINE_EXCEEDED) or retried:
        # The condition and the Event carry the cause: the trainer's own words when it gave them.
        said = _trainers_cause(previous) or verdict.message
        if retried:
            said = f"attempt {previous.attempt or 1} failed and is retried on a new Ray cluster: {said}"
        verdict = Verdict(verdict.phase, verdict.reason, said)
    phase = verdict.phase
    status = previous.model_copy(deep=True)
    status.phase = phase
    status.observed_generation = obs.generation
    status.attempt = _next_attempt(previous, phase, restarts)
    if restarts is not None:
        status.restarts = max(restarts, previous.restarts or 0)
    status.conditions = _conditions_for(obs, verdict, previous)
    status.message = _message(previous, verdict)
    _lineage(status, obs)
    if obs.rayjob is not None:
        rj_status = _rayjob_status(obs.rayjob)
        status.ray_job = obs.rayjob["metadata"]["name"]
        status.ray_cluster = rj_status.get("rayClusterName") or None
        status.dashboard_url = _dashboard_url(rj_status)
        job_id = rj_status.get("jobId")
        if job_id and status.attempt:
            status.attempts = record_attempt(status.attempts, status.attempt, job_id, status.ray_cluster, obs.now)
    account(previous, status, reason=verdict.reason, message=verdict.message, now=obs.now, gpus=obs.gpus)
    if phase in ACTIVE and status.start_time is None:
        status.start_time = obs.now
    if phase in TERMINAL and status.completion_time is None:
        status.completion_time = obs.now
    if phase not in TERMINAL:
        status.completion_time = None
    left_queue_after: float | None = None
    if phase == RunPhase.QUEUED and status.queued_since is None:
        status.queued_since = obs.now
    elif phase != RunPhase.QUEUED and previous.queued_since is not None:
        left_queue_after = (obs.now - previous.queued_since).total_seconds()
        status.queued_since = None

    event: PhaseEvent | None = None
    if phase != previous.phase or retried:
        kind = "Warning" if phase == RunPhase.FAILED or obs.blocked is not None or retried else "Normal"
        event = PhaseEvent(kind, phase.value, brief(verdict.message))
    elif obs.blocked is not None and _launched(previous).reason != obs.blocked.reason:
        event = PhaseEvent("Warning", obs.blocked.reason, brief(obs.blocked.message))
    update = StatusUpdate(status=status, previous_phase=previous.phase, event=event, left_queue_after=left_queue_after)
    update.changes = status_changes(previous, status)
    update.interrupted, update.settled = opened_and_settled(previous, status)
    return update


def operator_view(status: TrainingRunStatus) -> dict[str, Any]:
    """The operator-owned fields as they go on the wire (absent fields as None)."""
    wire = status.model_dump(mode="json", by_alias=True)
    return {key: wire.get(key) for key in OPERATOR_STATUS_FIELDS}


# Operator fields that say in words what other controllers are doing (and what KubeRay named the attempt's cluster
# and job): on the way to Running they change many times in a few seconds, and nobody acts on them before the phase
# that follows. Conditions' reasons and messages are words too; their status is not.
WORDS = frozenset({"message", "rayCluster", "dashboardURL", "attempts"})


def _acted_on(view: dict[str, Any]) -> dict[str, Any]:
    """The operator view less its words: what a reader (a person's `kubectl wait`, the trainer, the notifier, the
    operator itself on its next look) acts on."""
    kept = {key: value for key, value in view.items() if key not in WORDS}
    kept["conditions"] = [
        (c.get("type"), c.get("status"), c.get("observedGeneration")) for c in view.get("conditions") or []
    ]
    return kept


def only_words(previous: TrainingRunStatus, current: TrainingRunStatus) -> bool:
    """The change is in words only (messages, reasons, KubeRay's names): it may wait for the next write."""
    return _acted_on(operator_view(previous)) == _acted_on(operator_view(current))


def status_changes(previous: TrainingRunStatus, current: TrainingRunStatus) -> dict[str, Any]:
    """A merge patch of the operator's fields that changed; empty means nothing to write."""
    before, after = operator_view(previous), operator_view(current)
    changes = {key: value for key, value in after.items() if before.get(key) != value}
    if "conditions" in changes and not after["conditions"]:
        changes["conditions"] = None
    return changes
