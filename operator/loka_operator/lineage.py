"""spec.model.fromRun: a run that starts from another run's checkpoint waits until that checkpoint exists.

`resolve` is pure: given the waiting run, the source run as the watch cache holds it (None when it is gone) and
what status.source already records, it says whether the run waits, fails, or may start, and from which checkpoint.
The source's uid is recorded at first sight, so a source deleted (or replaced by a new run of the same name) while
the run waits fails it rather than leaving it waiting forever. Once recorded with its checkpoint, the lineage never
changes: it survives the source's deletion.

`fromRun: final` is the checkpoint the source's marker names once it succeeded, read from S3 (`read_marker`), never
its status: the trainer's status patches are best effort, and a lost last one would hand over the checkpoint before
the final one. The marker moves only after a checkpoint is complete (the contract), so it names the final one.

`pins_of` says which of a source's checkpoints its dependents resolved and still need (status.pins, which the
source's trainer mirrors into S3 pin objects that its pruning keeps): from the moment a dependent records it until
it has a checkpoint of its own (a retry before that stages it again), ends, or is deleted.

`SourceWaiters` remembers which runs wait on which source, so that a watch event of the source (a new checkpoint,
success, failure, deletion) reconciles exactly the runs waiting on it: no polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loka_api import CheckpointPin, FromRun, RunPhase, SourceStatus, TrainDataStatus, TrainingRun
from loka_api.contract import (
    ENV_AWS_ENDPOINT,
    FROM_RUN_FINAL,
    FROM_RUN_LATEST,
    MARKER_NAME,
    checkpoint_uri,
    run_checkpoint_prefix,
)
from loka_api.evaluation import Evaluation, EvaluationPhase
from loka_api.reward_models import served_components
from loka_operator.kube import JSON
from loka_operator.naming import run_key
from loka_operator.status import Problem, SourceState, TrainDataState

log = logging.getLogger(__name__)

# Why a run waits while the source's marker cannot be read (reconcile tries again after a while).
MARKER_UNREADABLE = "SourceMarkerUnreadable"

# A chain of fromRun longer than this is refused (and any loop is found within it).
MAX_CHAIN = 32

RunLookup = Callable[[str], JSON | None]  # a run of the same namespace by name, from the cache


@dataclass(frozen=True)
class Marker:
    """The source's marker as read from S3: the newest complete checkpoint it names, or why it could not be read."""

    step: int | None
    error: str | None = None


def marker_wanted(run: TrainingRun, source_body: JSON | None, *, which: Wanted | None = None) -> TrainingRun | None:
    """The source whose marker ``resolve`` needs: for `fromRun: final`, once the source succeeded, until the lineage
    is recorded (then it never changes). ``which``: which fromRun (default: spec.model.fromRun)."""
    which = which or model_source(run)
    from_run, recorded = which.from_run, which.recorded
    if from_run is None or from_run.checkpoint != FROM_RUN_FINAL or source_body is None:
        return None
    if recorded is not None and recorded.uri is not None:
        return None
    if ((source_body.get("status") or {}).get("phase")) != RunPhase.SUCCEEDED.value:
        return None
    try:
        return TrainingRun.model_validate(source_body)
    except ValidationError:
        return None


async def read_marker(source: TrainingRun, settings: Mapping[str, str]) -> Marker:
    """The final checkpoint of a source that succeeded, as its marker in S3 names it (the one reader of the layout,
    in a thread: boto3 blocks); ``settings``: the AWS variables to read with (endpoint and credentials)."""
    prefix = checkpoint_prefix_of(source)
    if prefix is None:
        return Marker(None)

    def read() -> int | None:
        from loka_api.checkpoints import CheckpointIndex
        from loka_api.storage import ObjectStore, S3Uri

        store = ObjectStore(settings=settings, concurrency=1)
        return CheckpointIndex(store, S3Uri.parse(prefix)).latest_complete()

    try:
        return Marker(await asyncio.to_thread(read))
    except Exception as error:  # unreachable store, refused credentials: say so, try again later
        said = f"{type(error).__name__}: {error}"
        for key, value in settings.items():  # the credentials never reach a log line or a condition
            if key != ENV_AWS_ENDPOINT and len(value) >= 4:
                said = said.replace(value, "<redacted>")
        log.warning("cannot read the marker under %s: %s", prefix, said)
        return Marker(None, error=said[:300])


def storage_settings(run: TrainingRun, credentials: Mapping[str, str]) -> dict[str, str]:
    """The AWS variables the run's trainer reads S3 with: its endpoint and its credentials Secret's keys."""
    settings = dict(credentials)
    endpoint = run.spec.storage.endpoint if run.spec.storage else None
    if endpoint:
        settings[ENV_AWS_ENDPOINT] = endpoint
    return settings


def checkpoint_prefix_of(source: TrainingRun) -> str | None:
    """Where the source run keeps its checkpoints: under its uid (the contract's layout, the one place that knows
    it), so a later run of the same name never hands over its own checkpoints.
    """
    if source.spec.checkpoints is None:
        return None
    meta = source.metadata
    return run_checkpoint_prefix(source.spec.checkpoints.uri, meta.namespace, meta.name, meta.uid)


def _wanted(from_run: FromRun) -> str:
    if from_run.checkpoint == FROM_RUN_FINAL:
        return "its final checkpoint"
    if from_run.checkpoint == FROM_RUN_LATEST:
        return "a checkpoint"
    return f"checkpoint step {from_run.checkpoint}"


def _describe(source: TrainingRun) -> str:
    phase = source.status.phase.value if source.status.phase else "Pending"
    step = source.status.checkpoint.step if source.status.checkpoint else None
    return f"it is {phase}" + (f", checkpoint step {step}" if step is not None else ", no checkpoint yet")


def _loop(run: TrainingRun, lookup: RunLookup) -> list[str] | None:
    """The chain of fromRun names that leads back to ``run``, if it does (then nobody ever starts)."""
    chain = [run.metadata.name]
    name = run.spec.model.from_run.name if run.spec.model.from_run else None
    while name is not None and len(chain) <= MAX_CHAIN:
        if name in chain:
            return [*chain, name] if name == run.metadata.name else None
        chain.append(name)
        body = lookup(name)
        following = ((body or {}).get("spec") or {}).get("model", {}).get("fromRun") or {}
        name = following.get("name")
    return None


@dataclass(frozen=True)
class Wanted:
    """One fromRun of a run: spec.model.fromRun (recorded in status.source) or a reward model's (recorded in
    status.rewardModels); ``field`` names it in messages."""

    from_run: FromRun | None
    recorded: SourceStatus | None
    field: str


def model_source(run: TrainingRun) -> Wanted:
    return Wanted(run.spec.model.from_run, run.status.source, "spec.model.fromRun")


def reward_model_sources(run: TrainingRun) -> list[tuple[str, Wanted]]:
    """Each reward component's rewardModel.fromRun, by component, with what status.rewardModels records of it."""
    recorded = {r.component: r for r in run.status.reward_models}
    found = []
    for component in served_components(run.spec):
        assert component.reward_model is not None
        entry = recorded.get(component.name)
        source = SourceStatus(run=entry.run, uid=entry.uid, step=entry.step, uri=entry.uri) if entry else None
        field = f"spec.reward.components[{component.name}].rewardModel.fromRun"
        found.append((component.name, Wanted(component.reward_model.from_run, source, field)))
    return found


def resolve(
    run: TrainingRun,
    source_body: JSON | None,
    *,
    lookup: RunLookup,
    marker: Marker | None = None,
    which: Wanted | None = None,
) -> SourceState:
    """Where ``run`` stands with the source its spec.model.fromRun names (``which``: another of its fromRuns);
    ``marker``: the source's, read once it succeeded when the run asks for its final checkpoint (`marker_wanted`)."""
    which = which or model_source(run)
    from_run, recorded, where = which.from_run, which.recorded, which.field
    if from_run is None:
        msg = f"run {run.metadata.name!r} names no {where}"
        raise ValueError(msg)
    name, namespace = from_run.name, run.metadata.namespace
    if recorded is not None and recorded.uri is not None:
        return SourceState(recorded)  # resolved before: the lineage is fixed
    seen = SourceStatus(run=name, uid=recorded.uid if recorded else None)
    wanted = _wanted(from_run)

    def waiting(reason: str, message: str, source: SourceStatus = seen) -> SourceState:
        return SourceState(source, waiting=Problem(reason, message))

    def failed(reason: str, message: str, source: SourceStatus = seen) -> SourceState:
        return SourceState(source, failed=Problem(reason, message))

    if source_body is None:
        if seen.uid is not None:
            return failed("SourceDeleted", f"source run {name!r} was deleted before it had {wanted}")
        return waiting("SourceNotFound", f"waiting for run {name!r} ({where}) to exist in {namespace!r}")
    uid = str(source_body.get("metadata", {}).get("uid", ""))
    if seen.uid is not None and uid != seen.uid:
        return failed(
            "SourceReplaced",
            f"source run {name!r} was deleted and created again (uid {seen.uid}, now {uid}) before it had {wanted}",
        )
    seen = SourceStatus(run=name, uid=uid)
    try:
        source = TrainingRun.model_validate(source_body)
    except ValidationError:
        return failed("SourceInvalid", f"source run {name!r} does not match the TrainingRun schema", seen)
    if where == model_source(run).field and (loop := _loop(run, lookup)) is not None:
        return failed("SourceCycle", f"spec.model.fromRun goes round in a circle: {' -> '.join(loop)}", seen)
    prefix = checkpoint_prefix_of(source)
    if prefix is None:
        return failed(
            "SourceKeepsNoCheckpoints", f"source run {name!r} has no spec.checkpoints: nothing to start from", seen
        )
    endpoint = source.spec.storage.endpoint if source.spec.storage else None
    ours = run.spec.storage.endpoint if run.spec.storage else None
    if endpoint != ours:
        return failed(
            "SourceStorageMismatch",
            f"source run {name!r} stores checkpoints at S3 endpoint {endpoint or 'AWS S3'}, "
            f"this run reads from {ours or 'AWS S3'} (spec.storage.endpoint must match)",
            seen,
        )

    phase = source.status.phase
    if from_run.checkpoint == FROM_RUN_FINAL and phase == RunPhase.SUCCEEDED:
        return _final(name, uid, prefix, marker)
    saved = source.status.checkpoint.step if source.status.checkpoint else None
    every = source.spec.checkpoints.every if source.spec.checkpoints else 1
    step = _checkpoint_step(from_run.checkpoint, phase, saved, every)
    if step is not None:
        return SourceState(SourceStatus(run=name, uid=uid, step=step, uri=checkpoint_uri(prefix, step)))
    if phase == RunPhase.FAILED:
        why = source.status.message or "no reason given"
        return failed("SourceFailed", f"source run {name!r} failed before it had {wanted}: {why}", seen)
    if phase == RunPhase.SUCCEEDED:
        return failed("SourceEnded", f"source run {name!r} succeeded without {wanted} ({_describe(source)})", seen)
    if (
        from_run.checkpoint not in (FROM_RUN_FINAL, FROM_RUN_LATEST)
        and saved is not None
        and saved > int(from_run.checkpoint)
    ):
        return failed(
            "SourceSkippedStep",
            f"source run {name!r} is past step {from_run.checkpoint} without saving it "
            f"(it saves every {every} steps and at its end; {_describe(source)})",
            seen,
        )
    return waiting("WaitingForSource", f"waiting for run {name!r} to have {wanted} ({_describe(source)})", seen)


def _final(name: str, uid: str, prefix: str, marker: Marker | None) -> SourceState:
    """The final checkpoint of a source that succeeded: the one its marker names."""
    seen = SourceStatus(run=name, uid=uid)
    where = f"{prefix}/{MARKER_NAME}"
    if marker is None:
        problem = Problem("ReadingSourceMarker", f"reading the marker of source run {name!r} ({where})")
        return SourceState(seen, waiting=problem)
    if marker.error is not None:
        message = f"cannot read the marker of source run {name!r} ({where}): {marker.error}; trying again"
        return SourceState(seen, waiting=Problem(MARKER_UNREADABLE, message))
    if marker.step is None:
        message = f"source run {name!r} succeeded without a complete checkpoint (its marker {where} names none)"
        return SourceState(seen, failed=Problem("SourceEnded", message))
    return SourceState(SourceStatus(run=name, uid=uid, step=marker.step, uri=checkpoint_uri(prefix, marker.step)))


def pins_of(source: TrainingRun, runs: Iterable[JSON]) -> list[CheckpointPin]:
    """The checkpoints of ``source`` its dependents (``runs`` of its namespace) recorded and still need: a model
    source's until the dependent has a checkpoint of its own, a served reward model's for as long as the dependent
    runs (a server pod that restarts stages it again)."""
    pins: dict[tuple[int, str, str], CheckpointPin] = {}

    def pin(step: int, run: str, uid: str) -> None:
        pins[(step, run, uid)] = CheckpointPin(step=step, run=run, uid=uid)

    for body in runs:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in (RunPhase.SUCCEEDED.value, RunPhase.FAILED.value):
            continue
        dependent = {"run": str(meta.get("name")), "uid": str(meta.get("uid"))}
        from_run = ((body.get("spec") or {}).get("model") or {}).get("fromRun") or {}
        recorded = status.get("source") or {}
        has_own = (status.get("checkpoint") or {}).get("step") is not None
        if from_run.get("name") == source.metadata.name and _records(recorded, source) and not has_own:
            pin(int(recorded["step"]), **dependent)
        for served in status.get("rewardModels") or []:
            if served.get("run") == source.metadata.name and _records(served, source):
                pin(int(served["step"]), **dependent)
    return [pins[k] for k in sorted(pins)]


def _records(recorded: Mapping[str, Any], source: TrainingRun) -> bool:
    """A dependent's record names a checkpoint of this very source (not of an earlier run of its name)."""
    return recorded.get("uid") == source.metadata.uid and recorded.get("step") is not None


def _checkpoint_step(wanted: str, phase: RunPhase | None, saved: int | None, every: int) -> int | None:
    """The source checkpoint to start from, or None while there is none to take (`final`: see `_final`)."""
    if saved is None or wanted == FROM_RUN_FINAL:
        return None
    if wanted == FROM_RUN_LATEST:
        return saved
    # A step the source passed is in S3 if it saved it (every N steps): the trainer checks its manifest, and says
    # so when keep pruned it meanwhile.
    step = int(wanted)
    return step if saved == step or (saved > step and step % every == 0) else None


def resolve_train_data(run: TrainingRun, evaluation_body: JSON | None) -> TrainDataState:
    """Where ``run`` stands with the Evaluation its spec.data.fromEvaluation names (None: not there): it trains on
    that Evaluation's preference pairs once it succeeded; once recorded, they never change."""
    name = run.spec.data.from_evaluation
    if name is None:
        msg = f"run {run.metadata.name!r} names no spec.data.fromEvaluation"
        raise ValueError(msg)
    recorded = run.status.train_data
    if recorded is not None and recorded.uri is not None:
        return TrainDataState(recorded)
    seen = TrainDataStatus(evaluation=name, uid=recorded.uid if recorded else None)

    def waiting(reason: str, message: str, data: TrainDataStatus = seen) -> TrainDataState:
        return TrainDataState(data, waiting=Problem(reason, message))

    def failed(reason: str, message: str, data: TrainDataStatus = seen) -> TrainDataState:
        return TrainDataState(data, failed=Problem(reason, message))

    if evaluation_body is None:
        if seen.uid is not None:
            return failed("EvaluationDeleted", f"Evaluation {name!r} was deleted before it had preference pairs")
        where = run.metadata.namespace
        return waiting("EvaluationNotFound", f"waiting for Evaluation {name!r} (spec.data.fromEvaluation) in {where!r}")
    seen = TrainDataStatus(evaluation=name, uid=str(evaluation_body.get("metadata", {}).get("uid", "")))
    if recorded is not None and recorded.uid is not None and recorded.uid != seen.uid:
        return failed("EvaluationReplaced", f"Evaluation {name!r} was deleted and created again before it ended")
    try:
        evaluation = Evaluation.model_validate(evaluation_body)
    except ValidationError:
        return failed("EvaluationInvalid", f"Evaluation {name!r} does not match the Evaluation schema", seen)
    theirs = evaluation.spec.storage.endpoint if evaluation.spec.storage else None
    ours = run.spec.storage.endpoint if run.spec.storage else None
    if theirs != ours:
        return failed(
            "EvaluationStorageMismatch",
            f"Evaluation {name!r} writes to S3 endpoint {theirs or 'AWS S3'}, this run reads from {ours or 'AWS S3'} "
            "(spec.storage.endpoint must match)",
            seen,
        )
    status = evaluation.status
    phase = status.phase or EvaluationPhase.PENDING
    if phase == EvaluationPhase.FAILED:
        return failed("EvaluationFailed", f"Evaluation {name!r} failed: {status.message or 'no reason given'}", seen)
    if phase != EvaluationPhase.SUCCEEDED or status.preferences_uri is None:
        return waiting("WaitingForEvaluation", f"waiting for Evaluation {name!r} to succeed (it is {phase})", seen)
    if not status.preferences:
        return failed(
            "EvaluationWithoutPairs",
            f"Evaluation {name!r} wrote no preference pairs (judged {status.samples_judged or 0} samples; "
            "lower its preferences.minMargin or judge more steps)",
            seen,
        )
    return TrainDataState(TrainDataStatus(evaluation=name, uid=seen.uid, uri=status.preferences_uri))


@dataclass
class SourceWaiters:
    """Which runs (by key) wait on which sources (by key): a run may wait on several (its model's source and its
    served reward models')."""

    _waiting_on: dict[str, frozenset[str]] = field(default_factory=dict)

    def wait(self, run: str, *sources: str) -> None:
        """``run`` waits on these sources now (none: on nothing)."""
        if sources:
            self._waiting_on[run] = frozenset(sources)
        else:
            self._waiting_on.pop(run, None)

    def done(self, run: str) -> None:
        self._waiting_on.pop(run, None)

    def dependents(self, source: str) -> list[str]:
        return sorted(run for run, on in self._waiting_on.items() if source in on)


def source_key(run: TrainingRun) -> str | None:
    from_run = run.spec.model.from_run
    return run_key(run.metadata.namespace, from_run.name) if from_run is not None else None


def source_keys_of(body: JSON) -> list[str]:
    """The keys of the runs a run's body names in spec.model.fromRun and its reward models' fromRun (their pins
    follow the dependent's status)."""
    spec = body.get("spec") or {}
    namespace = (body.get("metadata") or {}).get("namespace")
    names = [((spec.get("model") or {}).get("fromRun") or {}).get("name")]
    for component in (spec.get("reward") or {}).get("components") or []:
        names.append(((component.get("rewardModel") or {}).get("fromRun") or {}).get("name"))
    return sorted({run_key(namespace, name) for name in names if namespace and name})
