"""One level-based, idempotent reconcile of a TrainingRun: ordered steps, each "read the cache, then create or patch".

1. validate the spec, once per (uid, generation) and only before launch (the semantic checks and verl composition)
   - with spec.model.fromRun: find the source run's checkpoint (loka_operator.lineage); until it exists the
     run waits, and nothing is launched before status.source records it
2. check every referenced Secret and key (until the run launched; key names from metadata, never values)
3. ensure the Kueue LocalQueue (when the run names its ClusterQueue)
4. ensure the per-run ServiceAccount, Role, RoleBinding and NetworkPolicy (only ever the run's own: never adopted),
   then the side services the run brings (the child registry's entries with a builder, `children.py`)
5. ensure the RayJob and its Ray token Secret (and apply suspend, maxRestarts, the TTL after the RayJob finished)
6. calculate the status from what was observed and write the operator's fields only if they changed (a change in
   words only waits a few seconds for one that matters: `status_writer.py`)
7. start a sender for each notice the status owes (recorded with the phase); it posts in the background
   (`notifications.py`)

Reads come from watch-backed caches (`cache.py`); the API server is asked only to write, or when a create finds
the name taken. A step that cannot proceed stops the chain; the status says why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pydantic import ValidationError

from loka_api import CheckpointPin, QueueSpec, TrainingRun, TrainingRunStatus, kinds, secret_routes
from loka_api.contract import STORAGE_SECRET_KEYS
from loka_api.reward_models import served_components
from loka_operator import builders, deadline, kueue, lineage, naming
from loka_operator.builders.environment import image_servers, serving
from loka_operator.builders.reward_model import reward_model_quota_groups
from loka_operator.cache import Children, RunCache, WriteLedger
from loka_operator.children import (
    CHILDREN,
    NETWORK_POLICY,
    RAY_JOB,
    ROLE,
    ROLE_BINDING,
    SERVICE_ACCOUNT,
    WORKLOAD,
    ChildKind,
)
from loka_operator.config import OperatorConfig
from loka_operator.events import EventRecorder
from loka_operator.kube import JSON, ApiError, KubeClient
from loka_operator.messages import NO_SECRETS, Redactor, brief, cause
from loka_operator.metrics import OperatorMetrics
from loka_operator.notifications import Notifier
from loka_operator.ownership import Claim, claim
from loka_operator.status import (
    Observed,
    Problem,
    RewardModelState,
    SourceState,
    StatusUpdate,
    TrainDataState,
    finished,
    permanent_failure,
    workload_not_seen,
)
from loka_operator.status_writer import StatusWriter
from loka_operator.validation import Validations

log = logging.getLogger(__name__)

# KubeRay's jobDeploymentStatus values after which the RayJob never runs again.
RAYJOB_FINISHED = frozenset({"Complete", "Failed", "ValidationFailed"})
# A deleted RayJob's token Secret is still there: the next RayJob waits for garbage collection to remove it.
TOKEN_PENDING = "RayTokenPending"
# A run's next look for a missing Secret is cut by up to this share at random (runs created together spread out).
SECRET_RETRY_JITTER = 0.2
# The name the run needs is still held by a child of an earlier run of the same name (or one being deleted).
WAITING_FOR_PREVIOUS_RUN = "WaitingForPreviousRun"


@dataclass
class Outcome:
    """What the caller should do next: nothing, or look again after `requeue_after` seconds."""

    requeue_after: float | None = None
    phase: str | None = None


def now() -> datetime:
    # metav1.Time has second precision; matching it keeps status comparisons stable.
    return datetime.now(UTC).replace(microsecond=0)


def _servers_follow(run: TrainingRun, update: StatusUpdate | None) -> float | None:
    """0 (reconcile again at once) when the status just written admits, suspends or finishes a run that brings
    environment servers or serves reward models: their Deployments follow it (our own write's echo wakes nobody)."""
    if update is None or not (image_servers(run.spec) or served_components(run.spec)):
        return None
    return 0.0 if serving(run) != serving(run.model_copy(update={"status": update.status})) else None


def _plus_one(seconds: float | None) -> float | None:
    return None if seconds is None else seconds + 1


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True)
class Inputs:
    """What a run that has not launched starts from: its model's source, its training pairs, its served reward
    models' sources (None: it names none), and whether it still waits for any to be recorded in its status."""

    source: SourceState | None = None
    train_data: TrainDataState | None = None
    reward_models: tuple[RewardModelState, ...] | None = None
    waits: bool = False

    @property
    def ready(self) -> bool:
        """Every input it names exists (then, once its status records them, it launches)."""
        served = self.reward_models or ()
        return (
            (self.source is None or self.source.ready)
            and (self.train_data is None or self.train_data.ready)
            and all(rm.state.ready for rm in served)
        )


@dataclass
class Reconciler:
    client: KubeClient
    config: OperatorConfig
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    ledger: WriteLedger = field(default_factory=WriteLedger)
    validations: Validations = field(default_factory=Validations)
    # The child kinds (children.py); the ones with a builder are the run's side services.
    registry: tuple[ChildKind, ...] = CHILDREN
    cache: RunCache = field(init=False)
    children: Children = field(init=False)
    status: StatusWriter = field(init=False)
    notifier: Notifier = field(init=False)
    # Digests of each run's referenced Secret values (messages are redacted with them), by run: (uid, redactor).
    _redactors: dict[str, tuple[str, Redactor]] = field(default_factory=dict)
    # When this process first saw a run's RayJob finished, for a RayJob that carries no endTime.
    _seen_finished: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    # LocalQueues known to exist in this resync period: shared by many runs, so checked once per period.
    _local_queues: set[tuple[str, str]] = field(default_factory=set)
    # One ensure in flight per LocalQueue: the runs of a burst (one per worker) wait for it instead of each creating.
    _local_queue_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    # The uid of the RayJob whose Ray token Secret exists, per run (Secrets are never watched: no values cached).
    _tokens: dict[str, str] = field(default_factory=dict)
    # How many times in a row each run found a referenced Secret missing (its next look waits longer).
    _secret_looks: dict[str, int] = field(default_factory=dict)
    # Runs waiting for a source run's checkpoint: the source's watch events reconcile them.
    waiters: lineage.SourceWaiters = field(default_factory=lineage.SourceWaiters)
    # The Evaluations as their watch delivers them (set by the operator's startup), for spec.data.fromEvaluation;
    # the runs waiting for one are reconciled by its watch events.
    evaluations: RunCache | None = None
    evaluation_waiters: lineage.SourceWaiters = field(default_factory=lineage.SourceWaiters)

    def __post_init__(self) -> None:
        self.cache = RunCache(self.ledger, sources_of=lineage.source_keys_of)
        self.children = Children(self.ledger)
        self.status = StatusWriter(self.client, self.cache, EventRecorder(self.client), self.metrics)
        self.notifier = Notifier(self.client, backoff=self.config.notification_backoff)

    def forget(self, key: str) -> None:
        """The run is gone: drop everything known about it."""
        self.cache.forget(key)
        self.status.forget(key)
        self.notifier.forget(key)
        self.validations.forget(key)
        self._redactors.pop(key, None)
        self._seen_finished.pop(key, None)
        self._tokens.pop(key, None)
        self._secret_looks.pop(key, None)
        self.waiters.done(key)
        self.evaluation_waiters.done(key)
        self.metrics.observe_phase(key, None)

    def dependents(self, key: str) -> list[str]:
        """The runs waiting for run ``key``'s checkpoint (spec.model.fromRun): reconcile them when it changes."""
        return self.waiters.dependents(key)

    def evaluation_dependents(self, key: str) -> list[str]:
        """The runs waiting for Evaluation ``key``'s preference pairs (spec.data.fromEvaluation)."""
        return self.evaluation_waiters.dependents(key)

    def new_resync_period(self) -> None:
        """The drift-repair pass starts: shared objects are checked again (someone may have deleted one)."""
        self._local_queues.clear()

    # --------------------------------------------------------------------------- the loop

    async def reconcile(self, namespace: str, name: str, *, drift: bool = False) -> Outcome:
        key = naming.run_key(namespace, name)
        body = self.cache.run(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome()
        try:
            run = TrainingRun.model_validate(body)
        except ValidationError as error:
            previous = TrainingRunStatus.model_validate(body.get("status") or {})
            problem = Problem("InvalidSpec", f"spec does not match the TrainingRun schema: {error}")
            update = await self._write_status(body, previous, Observed(0, False, False, now(), invalid=problem))
            return Outcome(requeue_after=update.write_in if update is not None else None)
        meta, spec, previous = run.metadata, run.spec, run.status
        uid, generation = meta.uid, meta.generation
        gpus = spec.resources.workers * spec.resources.gpus_per_worker
        base = Observed(
            generation=generation, suspend=spec.suspend, queued=spec.queue is not None, now=now(), gpus=gpus
        )
        if drift and not finished(previous):
            # Secret values may have been rotated. A finished run's message is redacted already and never changes:
            # reading its Secrets again on every pass would cost a read per finished run, forever.
            self._redactors.pop(key, None)

        rayjob, blocked = await self._current(RAY_JOB, key, naming.rayjob_name(name), run)
        launched = rayjob is not None or previous.ray_job is not None

        # 1. semantic validation, once per (uid, generation), never after launch
        if not launched:
            invalid = await self.validations.check(key, uid, generation, spec)
            if invalid is not None:
                update = await self._write_status(body, previous, replace(base, now=now(), invalid=invalid))
                words = update.write_in if update is not None else None
                return Outcome(requeue_after=_sooner(self._notify(key), words), phase="Failed")

        # 1b. the source runs' checkpoints and the Evaluation's pairs: nothing launches before status records them
        inputs = await self._resolve_inputs(run, launched=launched)
        source, data, waits_for_source = inputs.source, inputs.train_data, inputs.waits

        # 2. secrets, until the run launched (key names only: no value is read for the check)
        missing = None if launched or finished(previous) else await self._missing_secrets(run)
        expired = deadline.exceeded(spec, previous, base.now)
        requeue = _sooner(
            _sooner(
                self._secret_retry(key, waiting=missing is not None),
                self._source_retry(source, *(rm.state for rm in inputs.reward_models or ())),
            ),
            _plus_one(deadline.seconds_until(spec, previous, base.now)),
        )

        # Past its deadline nothing launches again (a run it already ended only has its side services stopped).
        if missing is None and blocked is None and not waits_for_source and (not expired or finished(previous)):
            rayjob, blocked = await self._create_children(run, rayjob, check_first=drift)
        if blocked is not None:
            requeue = _sooner(requeue, self._retry_after(blocked))

        workload = None
        if rayjob is not None and spec.queue is not None:
            workload = kueue.workload_of(self.children.bodies(WORKLOAD, key), rayjob)
            if workload is not None and not self._rayjob_finished(rayjob):
                workload = await self._follow_suspend(key, workload, spec.suspend)

        no_workload, later = None, None
        if spec.queue is not None and workload is None:
            grace, selector = self.config.workload_grace_seconds, self.config.workload_selector
            no_workload, later = workload_not_seen(rayjob, selector, grace, now())
        requeue = _sooner(requeue, later)
        rayjob, ended_by_deadline, later = await self._stop_or_clean_up(run, rayjob, expired)
        requeue = _sooner(requeue, later)

        # 6. status
        observed = replace(
            base,
            now=now(),
            source=source,
            train_data=data,
            reward_models=inputs.reward_models,
            missing_secrets=missing,
            blocked=blocked,
            rayjob=await self._readable(run, rayjob),
            workload=workload,
            deadline=ended_by_deadline,
            no_workload=no_workload,
            pins=tuple(self._pins(run)),
        )
        update = await self._write_status(body, previous, observed)
        if inputs.ready and waits_for_source and update is not None:
            requeue = 0.0  # status.source now records the checkpoint: launch (our own write's echo wakes nobody)
        # 7. notifications
        if update is not None:
            requeue = _sooner(_sooner(requeue, self._notify(key)), update.write_in)
        phase = update.status.phase if update is not None else previous.phase
        return Outcome(
            requeue_after=_sooner(requeue, _servers_follow(run, update)), phase=phase.value if phase else None
        )

    # ------------------------------------------------------------------------------ steps

    async def _create_children(
        self, run: TrainingRun, rayjob: JSON | None, *, check_first: bool
    ) -> tuple[JSON | None, Problem | None]:
        """3. the Kueue LocalQueue, 4. the trainer's identity, the run's NetworkPolicy and its side services, 5. the
        RayJob and its Ray token. A finished run gets none of them: only its side services, which stop serving."""
        if finished(run.status):
            return rayjob, await self._ensure_side_services(run)
        # Independent round trips side by side: the LocalQueue, the identity, and the read of the token's name (on
        # the launch's critical path, one round trip each when taken in turn).
        launching = rayjob is None and not run.spec.suspend
        _queue, identity, taken = await asyncio.gather(
            self.ensure_local_queue(run.spec.queue, run.metadata.namespace),
            self._ensure_identity(run),
            self._ray_token_name_taken(run) if launching else _nothing(),
        )
        blocked = identity or await self._ensure_side_services(run)
        if blocked is not None:
            return rayjob, blocked
        if taken is not None:
            return None, taken
        return await self._launch(run, rayjob, check_first=check_first)

    async def _resolve_source(self, run: TrainingRun, wanted: lineage.Wanted) -> SourceState | None:
        """Where a run that has not launched stands with the run one of its fromRuns names (None: it names none),
        read from the run cache; the API only to confirm that a source seen before is really gone.
        """
        from_run = wanted.from_run
        if from_run is None or finished(run.status):
            return None
        namespace = run.metadata.namespace
        body = self.cache.run(naming.run_key(namespace, from_run.name))
        if body is None and wanted.recorded is not None and wanted.recorded.uid is not None:
            # Seen before, not cached now: right after a restart the run watch may not have delivered it yet.
            body = await self.client.get(kinds.TRAINING_RUN, namespace, from_run.name)
        if body is not None and body["metadata"].get("deletionTimestamp"):
            body = None  # going away: it will not produce the checkpoint
        marker = None
        if (source := lineage.marker_wanted(run, body, which=wanted)) is not None:
            marker = await lineage.read_marker(source, lineage.storage_settings(run, await self._s3_credentials(run)))
        return lineage.resolve(
            run,
            body,
            lookup=lambda name: self.cache.run(naming.run_key(namespace, name)),
            marker=marker,
            which=wanted,
        )

    async def _resolve_reward_models(self, run: TrainingRun) -> tuple[RewardModelState, ...] | None:
        """Each served reward model's source checkpoint, as for spec.model.fromRun (None: the run serves none)."""
        wanted = lineage.reward_model_sources(run)
        if not wanted or finished(run.status):
            return None
        found = []
        for component, source in wanted:
            state = await self._resolve_source(run, source)
            assert state is not None
            found.append(RewardModelState(component, state))
        return tuple(found)

    def _source_retry(self, *sources: SourceState | None) -> float | None:
        """How soon to look again at a source whose marker could not be read (the store may answer next time)."""
        for source in sources:
            if source is not None and source.waiting is not None and source.waiting.reason == lineage.MARKER_UNREADABLE:
                return self.config.refused_retry_seconds
        return None

    async def _s3_credentials(self, run: TrainingRun) -> dict[str, str]:
        """The keys of the run's S3 credentials Secret (what its trainer reads with); none: the default chain."""
        secret = run.spec.storage.credentials_secret if run.spec.storage else None
        if secret is None:
            return {}
        body = await self.client.get(kinds.SECRET, run.metadata.namespace, secret)
        data = (body or {}).get("data") or {}
        del body
        return {key: _decoded(data[key]) for key in STORAGE_SECRET_KEYS if key in data}

    def _pins(self, run: TrainingRun) -> list[CheckpointPin]:
        """This run's checkpoints that runs starting from it still need (from the run cache: only the runs that name
        it as a source, not every run of its namespace at every reconcile)."""
        source = naming.run_key(run.metadata.namespace, run.metadata.name)
        dependents = (self.cache.run(key) for key in self.cache.dependents(source))
        return lineage.pins_of(run, (body for body in dependents if body is not None))

    async def _resolve_inputs(self, run: TrainingRun, *, launched: bool) -> Inputs:
        """spec.model.fromRun's checkpoint, spec.data.fromEvaluation's pairs and the served reward models'
        checkpoints, before launch; and whether the run still waits for any (until status.source, status.trainData
        and status.rewardModels record them)."""
        if launched:
            return Inputs()
        previous = run.status
        source = await self._resolve_source(run, lineage.model_source(run))
        served = await self._resolve_reward_models(run)
        data = None if finished(previous) else self._resolve_train_data(run)
        # The source runs whose watch events reconcile this run while it waits for them.
        namespace, states = run.metadata.namespace, [source, *(rm.state for rm in served or ())]
        waiting_on = [naming.run_key(namespace, s.source.run or "") for s in states if s and s.waiting is not None]
        self.waiters.wait(naming.run_key(namespace, run.metadata.name), *waiting_on)
        waits = (
            (source is not None and not source.launchable(previous.source))
            or (data is not None and not data.launchable(previous.train_data))
            or any(not rm.launchable(previous.reward_models) for rm in served or ())
        )
        return Inputs(source, data, served, waits)

    def _resolve_train_data(self, run: TrainingRun) -> TrainDataState | None:
        """Where a run that has not launched stands with the Evaluation its spec.data.fromEvaluation names (None:
        it names none), read from the Evaluations' cache."""
        name = run.spec.data.from_evaluation
        if name is None:
            return None
        namespace, key = run.metadata.namespace, naming.run_key(run.metadata.namespace, run.metadata.name)
        evaluation_key = naming.run_key(namespace, name)
        body = self.evaluations.run(evaluation_key) if self.evaluations is not None else None
        if body is not None and body["metadata"].get("deletionTimestamp"):
            body = None
        state = lineage.resolve_train_data(run, body)
        if state.waiting is not None:
            self.evaluation_waiters.wait(key, evaluation_key)
        else:
            self.evaluation_waiters.done(key)
        return state

    async def _missing_secrets(self, run: TrainingRun) -> Problem | None:
        return await self.missing_secrets(run.metadata.namespace, secret_routes.wanted(secret_routes.of_run(run.spec)))

    async def missing_secrets(self, namespace: str, wanted: dict[str, list[str]]) -> Problem | None:
        """Which of the wanted Secrets and keys (by Secret) are missing, in words; None when all exist."""
        missing: list[str] = []
        for secret, keys in wanted.items():
            present = await self._secret_keys(namespace, secret, keys)
            if present is None:
                missing.append(f"Secret {secret!r} (keys {', '.join(keys)}) does not exist")
                continue
            lacking = [k for k in keys if k not in present]
            if lacking:
                missing.append(f"Secret {secret!r} has no key {', '.join(repr(k) for k in lacking)}")
        if not missing:
            return None
        return Problem("SecretMissing", "waiting for " + "; ".join(missing) + f" in namespace {namespace!r}")

    async def _secret_keys(self, namespace: str, secret: str, wanted: list[str]) -> set[str] | None:
        """The key names of a Secret, or None when it does not exist; never its values, when avoidable.

        The Secret's metadata alone (no `data` leaves the API server) names the keys of its `data` in
        `managedFields`, which the API server keeps exact for every write. Only when that does not show a wanted
        key is the Secret read whole, and only its key names kept: a key really missing, managedFields
        stripped, or a Secret written by server-side apply with `stringData` (recorded as applied, not as stored).
        """
        meta = await self.client.get_metadata(kinds.SECRET, namespace, secret)
        if meta is None:
            return None
        listed = _managed_data_keys(meta)
        if set(wanted) <= listed:
            return listed
        body = await self.client.get(kinds.SECRET, namespace, secret)
        if body is None:
            return None
        present = set((body.get("data") or {}).keys()) | set((body.get("stringData") or {}).keys())
        del body  # only key names leave this function
        return present

    async def ensure_local_queue(self, queue: QueueSpec | None, namespace: str) -> None:
        if queue is None:
            return
        manifest = builders.build_local_queue(queue, namespace)
        key = (namespace, queue.name)
        if manifest is None or key in self._local_queues:
            return
        async with self._local_queue_locks.setdefault(key, asyncio.Lock()):
            if key not in self._local_queues:
                await self._create_local_queue(queue, namespace, manifest)
                self._local_queues.add(key)

    async def _create_local_queue(self, queue: QueueSpec, namespace: str, manifest: JSON) -> None:
        try:
            await self.client.create(kinds.LOCAL_QUEUE, namespace, manifest)
        except ApiError as error:
            if error.status != 409:
                raise
            existing = await self.client.get(kinds.LOCAL_QUEUE, namespace, queue.name) or {}
            if existing.get("spec", {}).get("clusterQueue") != queue.cluster_queue:
                log.warning(
                    "LocalQueue %s/%s points at ClusterQueue %r, not %r as the run asks; leaving it",
                    namespace,
                    queue.name,
                    existing.get("spec", {}).get("clusterQueue"),
                    queue.cluster_queue,
                )

    async def _ensure_identity(self, run: TrainingRun) -> Problem | None:
        """The trainer's identity and the NetworkPolicy around the run's pods, before any of them exists."""
        name, namespace, uid = run.metadata.name, run.metadata.namespace, run.metadata.uid
        account = builders.build_service_account(name, namespace, uid)
        role = builders.build_role(name, namespace, uid)
        binding = builders.build_role_binding(name, namespace, uid)
        policy = builders.build_network_policy(name, namespace, uid, kuberay_namespace=self.config.kuberay_namespace)
        # The ServiceAccount, the Role and the NetworkPolicy side by side; the binding after its Role (without
        # `bind`, RBAC checks the Role's rules when a binding is created, so the Role must exist by then).
        problems = await asyncio.gather(
            self._ensure(SERVICE_ACCOUNT, run, account),
            self._ensure(ROLE, run, role),
            self._ensure(NETWORK_POLICY, run, policy),
        )
        first = next((problem for problem in problems if problem is not None), None)
        return first or await self._ensure(ROLE_BINDING, run, binding)

    async def _ensure_side_services(self, run: TrainingRun) -> Problem | None:
        """What each side service's builder returns for the run, before the RayJob whose pods use them."""
        for child in self.registry:
            for manifest in child.build(run, self.config) if child.build is not None else []:
                problem = await self._ensure(child, run, manifest)
                if problem is not None:
                    return problem
        return None

    async def _ensure(self, child: ChildKind, run: TrainingRun, manifest: JSON) -> Problem | None:
        """The run's own child: create it when absent, patch the fields this operator owns (`child.repaired`) back
        when they drifted.

        An object of that name the run does not own is never touched: the run waits and says why.
        """
        name = manifest["metadata"]["name"]
        namespace, key = run.metadata.namespace, naming.run_key(run.metadata.namespace, run.metadata.name)
        existing, problem = await self._current(child, key, name, run)
        if problem is not None:
            return problem
        if existing is None:
            existing, problem = await self._create(child, run, manifest)
            if existing is None or problem is not None:
                return problem
        drifted = child.drifted(manifest, existing)
        if drifted:
            log.info("repairing drift in %s %s/%s: %s", child.kind.plural, namespace, name, ", ".join(drifted))
            try:
                patched = await self.client.merge_patch(child.kind, namespace, name, drifted)
            except ApiError as error:
                if error.refused:
                    return _refused("update", child.name, name, error)
                raise
            self.children.wrote(child, key, patched)
        return None

    async def _create(self, child: ChildKind, run: TrainingRun, manifest: JSON) -> tuple[JSON | None, Problem | None]:
        """Create a child; on a name already taken, read it and say whose it is."""
        name, namespace = manifest["metadata"]["name"], run.metadata.namespace
        try:
            created = await self.client.create(child.kind, namespace, manifest)
        except ApiError as error:
            if error.refused:
                return None, _refused("create", child.name, name, error)
            if error.status != 409:
                raise
            existing = await self.client.get(child.kind, namespace, name)
            if existing is None:
                raise  # deleted meanwhile: the retry creates it
            return _claimed(child.name, existing, run)
        self.children.wrote(child, naming.run_key(namespace, run.metadata.name), created)
        return created, None

    async def _current(
        self, child: ChildKind, key: str, name: str, run: TrainingRun
    ) -> tuple[JSON | None, Problem | None]:
        """The child as the cache holds it, if it is this run's; otherwise why the run cannot use the name.

        Before the run is told to wait for an earlier run's child to be collected, one GET confirms the child is
        still there: a cache that missed its deletion (a watch gap) would otherwise keep the run waiting forever.
        """
        found = self.children.get(child, key, name)
        if found is None:
            return None, None
        current, problem = _claimed(child.name, found, run)
        if problem is None or problem.reason != WAITING_FOR_PREVIOUS_RUN:
            return current, problem
        fresh = await self.client.get(child.kind, run.metadata.namespace, name)
        if fresh is None:
            log.info(
                "the %s %s/%s the cache still held is gone; forgetting it", child.name, run.metadata.namespace, name
            )
            self.children.gone(child, key, found)
            return None, None
        if child.run_of(fresh) == key:
            self.children.observe(child, key, fresh)
        return _claimed(child.name, fresh, run)

    async def _launch(
        self, run: TrainingRun, rayjob: JSON | None, *, check_first: bool
    ) -> tuple[JSON | None, Problem | None]:
        """The RayJob, then its Ray token Secret. The token is owned by the RayJob, not the run: KubeRay's RayJob
        finalizer reads it to stop the job, so it must outlive the RayJob when the run is deleted. The pods wait
        for it (kubelets retry a missing `secretKeyRef`). A Secret planted under its name is never used: before the
        RayJob exists, it stops the launch (`_create_children` reads the name first); after, the RayJob is taken
        down again."""
        rayjob, problem = await self._ensure_rayjob(run, rayjob)
        if rayjob is None or problem is not None:
            return rayjob, problem
        conflict = await self._ensure_ray_token(run, rayjob, check_first=check_first)
        if conflict is not None:
            namespace, name = run.metadata.namespace, rayjob["metadata"]["name"]
            await self.client.delete(RAY_JOB.kind, namespace, name)
            self.children.deleted(RAY_JOB, naming.run_key(namespace, run.metadata.name), name)
            return None, conflict
        return rayjob, None

    async def _ray_token_name_taken(self, run: TrainingRun) -> Problem | None:
        """Before a RayJob exists, a Secret under its token's name is someone else's (or a deleted RayJob's)."""
        name = naming.ray_auth_secret_name(run.metadata.name)
        existing = await self.client.get_metadata(kinds.SECRET, run.metadata.namespace, name)
        if existing is None:
            return None
        owners = existing.get("metadata", {}).get("ownerReferences") or []
        rayjob = naming.rayjob_name(run.metadata.name)
        by_rayjob = [o for o in owners if kinds.RAY_JOB.owns(o.get("apiVersion", ""), o.get("kind", ""))]
        if any(o.get("name") == rayjob for o in by_rayjob):
            return Problem(TOKEN_PENDING, f"waiting for the Secret {name!r} of a deleted RayJob to be removed")
        return _token_conflict(name)

    async def _ensure_ray_token(self, run: TrainingRun, rayjob: JSON, *, check_first: bool) -> Problem | None:
        """Create the RayJob's Ray token once. It is never read back: its metadata shows whose it is."""
        namespace, key = run.metadata.namespace, naming.run_key(run.metadata.namespace, run.metadata.name)
        owner = rayjob["metadata"]["uid"]
        if self._tokens.get(key) == owner and not check_first:
            return None
        name = naming.ray_auth_secret_name(run.metadata.name)
        existing = await self.client.get_metadata(kinds.SECRET, namespace, name) if check_first else None
        if existing is None:
            token = builders.build_ray_auth_secret(
                run.metadata.name, namespace, rayjob["metadata"]["name"], owner, builders.new_ray_token()
            )
            try:
                await self.client.create(kinds.SECRET, namespace, token)
                self._tokens[key] = owner
                return None
            except ApiError as error:
                if error.status != 409:
                    raise
            existing = await self.client.get_metadata(kinds.SECRET, namespace, name)
        if existing is not None and not _owned_by(existing, owner):
            # Someone else's token would let them into the run's Ray cluster: never adopt it.
            return _token_conflict(name)
        self._tokens[key] = owner
        return None

    async def _ensure_rayjob(self, run: TrainingRun, rayjob: JSON | None) -> tuple[JSON | None, Problem | None]:
        spec, name, namespace = run.spec, run.metadata.name, run.metadata.namespace
        if rayjob is None:
            if spec.suspend:
                return None, None  # nothing to suspend yet: launch when resumed
            manifest = builders.build_rayjob(
                spec,
                run=name,
                namespace=namespace,
                uid=run.metadata.uid,
                settings=self.config.rayjob,
                active_deadline_seconds=deadline.active_deadline_seconds(spec, run.status, None, now()),
                reward_model_groups=reward_model_quota_groups(run),
            )
            created, problem = await self._create(RAY_JOB, run, manifest)
            if created is not None and problem is None:
                log.info("created RayJob %s/%s", namespace, name)
            return created, problem
        patch: JSON = {}
        if rayjob.get("spec", {}).get("backoffLimit") != spec.max_restarts:
            patch["backoffLimit"] = spec.max_restarts
        # KubeRay's clock restarts with each attempt: keep it pointed at the run's deadline (None removes it).
        # Before KubeRay started this attempt's clock, the value the RayJob was created with stands.
        timed = bool((rayjob.get("status") or {}).get("startTime")) or spec.deadline is None
        active_deadline = deadline.active_deadline_seconds(spec, run.status, rayjob, now())
        current = rayjob.get("spec", {}).get("activeDeadlineSeconds")
        if timed and current != active_deadline and not self._rayjob_finished(rayjob):
            patch["activeDeadlineSeconds"] = active_deadline
        # Under Kueue, suspend belongs to Kueue (driven through the Workload); otherwise it is ours.
        if spec.queue is None and bool(rayjob.get("spec", {}).get("suspend", False)) != spec.suspend:
            patch["suspend"] = spec.suspend
        if not patch:
            return rayjob, None
        patched = await self.client.merge_patch(RAY_JOB.kind, namespace, rayjob["metadata"]["name"], {"spec": patch})
        self.children.wrote(RAY_JOB, naming.run_key(namespace, name), patched)
        return patched, None

    async def _follow_suspend(self, key: str, workload: JSON, suspend: bool) -> JSON:
        """Kueue re-admits a suspended RayJob it holds quota for; deactivating its Workload is how to stop it."""
        patch = kueue.activation_patch(workload, suspend)
        if patch is None:
            return workload
        meta = workload["metadata"]
        updated = await self.client.merge_patch(WORKLOAD.kind, meta["namespace"], meta["name"], patch)
        self.children.wrote(WORKLOAD, key, updated)
        return updated

    @staticmethod
    def _rayjob_finished(rayjob: JSON) -> bool:
        return (rayjob.get("status") or {}).get("jobDeploymentStatus") in RAYJOB_FINISHED

    def _ttl_left(self, key: str, rayjob: JSON, ttl: int) -> float | None:
        """Seconds until the finished RayJob is deleted; None while it runs.

        Decided from the RayJob's own terminal state and end time (KubeRay writes those), never from the run's
        status, which the trainer may patch.
        """
        if not self._rayjob_finished(rayjob):
            self._seen_finished.pop(key, None)
            return None
        uid = rayjob["metadata"].get("uid", "")
        ended = _parse_time((rayjob.get("status") or {}).get("endTime"))
        if ended is None:
            seen = self._seen_finished.get(key)
            if seen is None or seen[0] != uid:
                seen = self._seen_finished[key] = (uid, now())
            ended = seen[1]
        return (ended - now()).total_seconds() + ttl

    async def _stop_if_permanent(self, run: TrainingRun, rayjob: JSON | None) -> JSON | None:
        """The trainer knows no retry can help: stop KubeRay from starting another Ray cluster for the run."""
        if rayjob is None or permanent_failure(run.status) is None or self._rayjob_finished(rayjob):
            return rayjob
        await self._delete_rayjob(run, rayjob, why="the trainer's failure is permanent")
        return None

    async def _stop_or_clean_up(
        self, run: TrainingRun, rayjob: JSON | None, expired: Problem | None
    ) -> tuple[JSON | None, Problem | None, float | None]:
        """The RayJob after the steps that stop or remove it (a permanent failure, the deadline, the TTL after the
        run finished); why the deadline ended the run; when to look again."""
        rayjob = await self._stop_if_permanent(run, rayjob)
        ended_by_deadline, requeue = await self._stop_at_deadline(run, rayjob, expired)
        if ended_by_deadline is not None and rayjob is not None and not self._rayjob_finished(rayjob):
            rayjob = None  # deleted: the run ends with the checkpoint its trainer saves on the way out
        ttl = run.spec.ttl_seconds_after_finished
        if rayjob is not None and ttl is not None:
            key = naming.run_key(run.metadata.namespace, run.metadata.name)
            left = self._ttl_left(key, rayjob, ttl)
            if left is not None and left <= 0:
                await self._delete_rayjob(run, rayjob, why="ttlSecondsAfterFinished passed")
                rayjob = None
            elif left is not None:
                requeue = _sooner(requeue, left + 1)
        return rayjob, ended_by_deadline, requeue

    async def _stop_at_deadline(
        self, run: TrainingRun, rayjob: JSON | None, expired: Problem | None
    ) -> tuple[Problem | None, float | None]:
        """spec.deadline passed: (why the run ends, when no attempt runs any more; seconds until KubeRay is given up
        on). KubeRay stops an attempt it times itself (activeDeadlineSeconds); any other RayJob that has not
        finished is deleted here (a suspended or queued run, or one KubeRay has not stopped shortly after)."""
        if expired is None or run.spec.deadline is None:
            return None, None
        if rayjob is None or self._rayjob_finished(rayjob) or finished(run.status):
            succeeded = ((rayjob or {}).get("status") or {}).get("jobStatus") == "SUCCEEDED"
            return (None if succeeded else expired), None
        ends = deadline.deadline_at(run.spec, run.status)
        late = (now() - ends).total_seconds() if ends is not None else 0.0
        if deadline.kuberay_timing(rayjob) and late < deadline.KUBERAY_SLACK_S:
            return None, deadline.KUBERAY_SLACK_S - late
        await self._delete_rayjob(run, rayjob, why="spec.deadline passed")
        return expired, None

    async def _delete_rayjob(self, run: TrainingRun, rayjob: JSON, *, why: str) -> None:
        namespace, name = run.metadata.namespace, rayjob["metadata"]["name"]
        await self.client.delete(RAY_JOB.kind, namespace, name)
        self.children.deleted(RAY_JOB, naming.run_key(namespace, run.metadata.name), name)
        log.info("deleted RayJob %s/%s: %s", namespace, name, why)

    async def _readable(self, run: TrainingRun, rayjob: JSON | None) -> JSON | None:
        """The RayJob with KubeRay's message and reason cut to one line and the run's secret values redacted."""
        status = (rayjob or {}).get("status") or {}
        if rayjob is None or not (status.get("message") or status.get("reason")):
            return rayjob
        redactor = await self._redactor(run)
        cleaned = {k: (cause if k == "message" else brief)(status.get(k), redactor) for k in ("message", "reason")}
        cleaned = {k: v for k, v in cleaned.items() if v}
        return {**rayjob, "status": {**status, **cleaned}}

    async def _redactor(self, run: TrainingRun) -> Redactor:
        key = naming.run_key(run.metadata.namespace, run.metadata.name)
        known = self._redactors.get(key)
        if known is None or known[0] != run.metadata.uid:
            wanted = secret_routes.wanted(secret_routes.of_run(run.spec))
            if not wanted:
                return NO_SECRETS
            known = self._redactors[key] = (run.metadata.uid, await self._digests(run.metadata.namespace, wanted))
        return known[1]

    async def _digests(self, namespace: str, wanted: dict[str, list[str]]) -> Redactor:
        """The one place Secret values are read: only once KubeRay has a message to show (it may quote a driver log),
        and only their digests leave this function."""
        values: list[str] = []
        for secret, keys in wanted.items():
            body = await self.client.get(kinds.SECRET, namespace, secret)
            data = (body or {}).get("data") or {}
            values += [_decoded(data[k]) for k in keys if k in data]
            del body, data
        redactor = Redactor.of(values)
        del values
        return redactor

    def _secret_retry(self, key: str, *, waiting: bool) -> float | None:
        """When a run waiting for a Secret looks again: soon at first, then doubling to a cap, with jitter (Secrets
        are not watched, so each look is a GET; a run left waiting for days costs one a minute, not twelve)."""
        if not waiting:
            self._secret_looks.pop(key, None)
            return None
        looks = self._secret_looks[key] = self._secret_looks.get(key, 0) + 1
        config = self.config
        delay: float = min(config.secret_retry_seconds * 2.0 ** (looks - 1), config.secret_retry_max_seconds)
        return delay * (1 - random.uniform(0, SECRET_RETRY_JITTER))

    def _retry_after(self, problem: Problem) -> float:
        if problem.reason in (WAITING_FOR_PREVIOUS_RUN, TOKEN_PENDING):
            return self.config.previous_run_retry_seconds
        return self.config.refused_retry_seconds

    def _notify(self, key: str) -> float | None:
        """Send what the status as our own write left it owes; when to look again for a claim that may expire."""
        body = self.cache.run(key)
        return self.notifier.step(body) if body is not None else None

    # ----------------------------------------------------------------------------- status

    async def _write_status(self, body: JSON, previous: TrainingRunStatus, observed: Observed) -> StatusUpdate | None:
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        update = await self.status.write(body, previous, observed)
        if update is None:
            self.forget(key)
        return update


async def _nothing() -> None:
    return None


def _claimed(kind: str, obj: JSON, run: TrainingRun) -> tuple[JSON | None, Problem | None]:
    name = obj["metadata"]["name"]
    match claim(obj, run.metadata.name, run.metadata.uid):
        case Claim.OURS if obj["metadata"].get("deletionTimestamp"):
            return None, Problem(
                WAITING_FOR_PREVIOUS_RUN, f"the {kind} {name} is being deleted; waiting to recreate it"
            )
        case Claim.OURS:
            return obj, None
        case Claim.PREVIOUS_RUN:
            return None, Problem(
                WAITING_FOR_PREVIOUS_RUN,
                f"the {kind} {name} still belongs to an earlier run named {run.metadata.name!r}; "
                "waiting for garbage collection to remove it",
            )
        case _:
            return None, Problem(
                "NameConflict",
                f"a {kind} named {name!r} already exists and is not owned by this run; delete it or rename the run",
            )


def _token_conflict(name: str) -> Problem:
    return Problem(
        "NameConflict",
        f"a Secret named {name!r} already exists and is not owned by this run's RayJob; delete it or rename the run",
    )


def _managed_data_keys(meta: JSON) -> set[str]:
    """Key names of a Secret's `data` from its managedFields (a removed key leaves every manager's set)."""
    keys: set[str] = set()
    for entry in meta.get("metadata", {}).get("managedFields") or []:
        data = (entry.get("fieldsV1") or {}).get("f:data") or {}
        keys |= {field.removeprefix("f:") for field in data if field.startswith("f:")}
    return keys


def _owned_by(obj: JSON, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences", []) or [])


def _refused(verb: str, kind: str, name: str, error: ApiError) -> Problem:
    return Problem("CreateRefused", f"the API server refused to {verb} the {kind} {name}: {error.message}")


def _decoded(value: str) -> str:
    try:
        return base64.b64decode(value).decode(errors="replace")
    except (binascii.Error, ValueError):
        return ""


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
