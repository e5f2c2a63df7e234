"""One level-based, idempotent reconcile of a TrainingRun: ordered steps, each "get, then create or patch".

1. validate the spec (schema is the API server's job; here the semantic checks and verl composition)
   - with spec.model.fromRun: find the source run's checkpoint (loka_operator.lineage); until it exists the
     run waits, and nothing is launched before status.source records it
2. check every referenced Secret and key
3. ensure the Kueue LocalQueue (when the run names its ClusterQueue)
4. ensure the per-run ServiceAccount, Role and RoleBinding
5. ensure the RayJob (and apply suspend, maxRestarts, the TTL after the run finished)
6. calculate the status from what was observed and write the operator's fields only if they changed
7. claim the notification the new phase asks for; a background task posts it (`notifications.py`)

A step that cannot proceed stops the chain; the status still says why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pydantic import ValidationError

from loka_api import QueueSpec, TrainingRun, TrainingRunStatus
from loka_operator import builders, lineage, naming
from loka_operator.cache import RunCache
from loka_operator.config import OperatorConfig
from loka_operator.events import EventRecorder
from loka_operator.kube import (
    JSON,
    LOCAL_QUEUES,
    RAYJOBS,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SERVICE_ACCOUNTS,
    WORKLOADS,
    ApiError,
    KubeClient,
    Resource,
)
from loka_operator.metrics import OperatorMetrics
from loka_operator.notifications import Notifier, webhook_refs
from loka_operator.status import TERMINAL, Observed, Problem, SourceState, StatusUpdate, finished, rejected
from loka_operator.status_writer import StatusWriter
from loka_operator.validation import validate_spec

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the caller should do next: nothing, or look again after `requeue_after` seconds."""

    requeue_after: float | None = None
    phase: str | None = None


def now() -> datetime:
    # metav1.Time has second precision; matching it keeps status comparisons stable.
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Reconciler:
    client: KubeClient
    config: OperatorConfig
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    cache: RunCache = field(init=False)
    status: StatusWriter = field(init=False)
    notifier: Notifier = field(init=False)
    # (uid, generation) for which steps 2-4 already succeeded; the drift pass redoes them.
    _ensured: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Runs waiting for a source run's checkpoint: the source's watch events reconcile them.
    waiters: lineage.SourceWaiters = field(default_factory=lineage.SourceWaiters)

    def __post_init__(self) -> None:
        self.cache = RunCache(self.client)
        self.status = StatusWriter(self.client, self.cache, EventRecorder(self.client), self.metrics)
        self.notifier = Notifier(self.client, backoff=self.config.notification_backoff)

    def forget(self, key: str) -> None:
        """The run is gone: drop everything known about it."""
        self.cache.forget(key)
        self.notifier.forget(key)
        self._ensured.pop(key, None)
        self.waiters.done(key)
        self.metrics.observe_phase(key, None)

    def dependents(self, key: str) -> list[str]:
        """The runs waiting for run ``key``'s checkpoint (spec.model.fromRun): reconcile them when it changes."""
        return self.waiters.dependents(key)

    # --------------------------------------------------------------------------- the loop

    async def reconcile(self, namespace: str, name: str, *, drift: bool = False) -> Outcome:
        key = naming.run_key(namespace, name)
        body = await self.cache.load_run(namespace, name, fresh=drift)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome()
        try:
            run = TrainingRun.model_validate(body)
        except ValidationError as error:
            previous = TrainingRunStatus.model_validate(body.get("status") or {})
            problem = Problem("InvalidSpec", f"spec does not match the TrainingRun schema: {error}")
            await self._write_status(body, previous, Observed(0, False, False, now(), invalid=problem))
            return Outcome()
        meta, spec, previous = run.metadata, run.spec, run.status
        uid, generation = meta.uid, meta.generation
        base = Observed(generation=generation, suspend=spec.suspend, queued=spec.queue is not None, now=now())

        # 1. semantic validation (composition is CPU-bound and cached: keep it off the event loop)
        invalid = await asyncio.to_thread(validate_spec, spec)
        if invalid is not None:
            await self._write_status(body, previous, replace(base, now=now(), invalid=invalid))
            await self._notify(namespace, name)
            return Outcome(phase="Failed")

        rayjob = await self.cache.load_rayjob(namespace, name, fresh=drift)
        conflict: Problem | None = None
        if rayjob is not None and not _owned_by(rayjob, uid):
            conflict = Problem(
                "NameConflict",
                f"a RayJob named {naming.rayjob_name(name)!r} already exists and is not owned by this run; "
                "delete it or rename the run",
            )
            rayjob = None

        # 1b. the source run's checkpoint: nothing launches before status.source records it
        source = await self._resolve_source(run, launched=rayjob is not None, drift=drift)

        # 2. secrets (values are never read into anything but a key set)
        ensured = self._ensured.get(key) == (uid, generation) and not drift
        missing = None if ensured and rayjob is not None else await self._missing_secrets(run)
        requeue = self.config.secret_retry_seconds if missing is not None else None

        launchable = missing is None and conflict is None and not finished(previous)
        launchable = launchable and (source is None or source.launchable(previous.source))
        if launchable:
            if not ensured:
                # 3. Kueue LocalQueue, 4. the trainer's identity
                if spec.queue is not None:
                    await self._ensure_local_queue(spec.queue, namespace)
                await self._ensure_rbac(name, namespace, uid, check_first=drift or key in self._ensured)
                self._ensured[key] = (uid, generation)
            # 5. the RayJob
            rayjob = await self._ensure_rayjob(run, rayjob)

        workload = None
        if rayjob is not None and spec.queue is not None:
            workload = await self._find_workload(namespace, rayjob)
            if rayjob is not None and not finished(previous):
                await self._apply_kueue_suspend(workload, spec.suspend)

        if rayjob is not None and finished(previous) and spec.ttl_seconds_after_finished is not None:
            requeue = await self._expire(run, rayjob)
            if requeue is None:
                rayjob = None

        # 6. status
        observed = replace(
            base,
            now=now(),
            source=source,
            missing_secrets=missing,
            conflict=conflict,
            rayjob=rayjob,
            workload=workload,
        )
        update = await self._write_status(body, previous, observed)
        # 7. notifications
        if update is not None:
            await self._notify(namespace, name)
        phase = update.status.phase if update is not None else previous.phase
        if phase in TERMINAL and spec.ttl_seconds_after_finished is not None and rayjob is not None and requeue is None:
            requeue = float(spec.ttl_seconds_after_finished) + 1
        return Outcome(requeue_after=requeue, phase=phase.value if phase else None)

    # ------------------------------------------------------------------------------ steps

    async def _resolve_source(self, run: TrainingRun, *, launched: bool, drift: bool) -> SourceState | None:
        """Where the run stands with the run its spec.model.fromRun names (None: no source, or it launched already),
        read from the watch cache (the API only when the source is not cached).
        """
        if run.spec.model.from_run is None or launched or finished(run.status):
            return None
        namespace, key = run.metadata.namespace, naming.run_key(run.metadata.namespace, run.metadata.name)
        source_name = run.spec.model.from_run.name if run.spec.model.from_run else ""
        body = await self.cache.load_run(namespace, source_name, fresh=drift)
        if body is not None and body["metadata"].get("deletionTimestamp"):
            body = None  # going away: it will not produce the checkpoint
        state = lineage.resolve(run, body, lookup=lambda name: self.cache.cached_run(namespace, name))
        if state.waiting is not None:
            self.waiters.wait(key, naming.run_key(namespace, source_name))
        else:
            self.waiters.done(key)
        return state

    async def _missing_secrets(self, run: TrainingRun) -> Problem | None:
        namespace = run.metadata.namespace
        wanted: dict[str, list[str]] = {}
        for _env, secret, key in builders.referenced_secrets(run.spec):
            wanted.setdefault(secret, []).append(key)
        for ref in webhook_refs(run.spec):
            wanted.setdefault(ref.secret, []).append(ref.key)
        missing: list[str] = []
        for secret, keys in wanted.items():
            body = await self.client.get(SECRETS, namespace, secret)
            if body is None:
                missing.append(f"Secret {secret!r} (keys {', '.join(keys)}) does not exist")
                continue
            present = set((body.get("data") or {}).keys()) | set((body.get("stringData") or {}).keys())
            del body  # only key names leave this function
            lacking = [k for k in keys if k not in present]
            if lacking:
                missing.append(f"Secret {secret!r} has no key {', '.join(repr(k) for k in lacking)}")
        if not missing:
            return None
        return Problem("SecretMissing", "waiting for " + "; ".join(missing) + f" in namespace {namespace!r}")

    async def _ensure_local_queue(self, queue: QueueSpec, namespace: str) -> None:
        manifest = builders.build_local_queue(queue, namespace)
        if manifest is None:
            return
        existing = await self.client.get(LOCAL_QUEUES, namespace, queue.name)
        if existing is None:
            await self._create(LOCAL_QUEUES, namespace, manifest)
        elif existing.get("spec", {}).get("clusterQueue") != queue.cluster_queue:
            log.warning(
                "LocalQueue %s/%s points at ClusterQueue %r, not %r as the run asks; leaving it",
                namespace,
                queue.name,
                existing.get("spec", {}).get("clusterQueue"),
                queue.cluster_queue,
            )

    async def _ensure_rbac(self, run: str, namespace: str, uid: str, *, check_first: bool) -> None:
        account = builders.build_service_account(run, namespace, uid)
        await self._ensure(SERVICE_ACCOUNTS, namespace, account, (), check_first=check_first)
        role = builders.build_role(run, namespace, uid)
        await self._ensure(ROLES, namespace, role, ("rules",), check_first=check_first)
        binding = builders.build_role_binding(run, namespace, uid)
        await self._ensure(ROLE_BINDINGS, namespace, binding, ("subjects",), check_first=check_first)

    async def _ensure(
        self, resource: Resource, namespace: str, manifest: JSON, owned: tuple[str, ...], *, check_first: bool
    ) -> JSON:
        """Get, then create or patch the fields this operator owns back to what they should be.

        For a run this process has not handled yet the object most likely does not exist: create first
        and read only on a conflict, which saves a GET per child when many runs arrive at once.
        """
        name = manifest["metadata"]["name"]
        if check_first:
            existing = await self.client.get(resource, namespace, name)
            if existing is None:
                return await self._create(resource, namespace, manifest)
        else:
            try:
                return await self.client.create(resource, namespace, manifest)
            except ApiError as error:
                if error.status != 409:
                    raise
            existing = await self.client.get(resource, namespace, name)
            if existing is None:
                return await self._create(resource, namespace, manifest)
        drifted = {k: manifest[k] for k in owned if existing.get(k) != manifest[k]}
        if drifted:
            log.info("repairing drift in %s %s/%s: %s", resource.plural, namespace, name, ", ".join(drifted))
            return await self.client.merge_patch(resource, namespace, name, drifted)
        return existing

    async def _create(self, resource: Resource, namespace: str, manifest: JSON) -> JSON:
        try:
            return await self.client.create(resource, namespace, manifest)
        except ApiError as error:
            if error.status != 409:
                raise
            # Created meanwhile (e.g. by the previous operator process before it was killed).
            existing = await self.client.get(resource, namespace, manifest["metadata"]["name"])
            if existing is None:
                raise
            return existing

    async def _ensure_rayjob(self, run: TrainingRun, rayjob: JSON | None) -> JSON | None:
        spec, name, namespace = run.spec, run.metadata.name, run.metadata.namespace
        if rayjob is None:
            if spec.suspend:
                return None  # nothing to suspend yet: launch when resumed
            manifest = builders.build_rayjob(
                spec, run=name, namespace=namespace, uid=run.metadata.uid, settings=self.config.rayjob
            )
            created = await self._create(RAYJOBS, namespace, manifest)
            self.cache.remember_rayjob(naming.run_key(namespace, name), created)
            log.info("created RayJob %s/%s", namespace, name)
            return created
        patch: JSON = {}
        if rayjob.get("spec", {}).get("backoffLimit") != spec.max_restarts:
            patch["backoffLimit"] = spec.max_restarts
        # Under Kueue, suspend belongs to Kueue (driven through the Workload); otherwise it is ours.
        if spec.queue is None and bool(rayjob.get("spec", {}).get("suspend", False)) != spec.suspend:
            patch["suspend"] = spec.suspend
        if not patch:
            return rayjob
        patched = await self.client.merge_patch(RAYJOBS, namespace, name, {"spec": patch})
        self.cache.remember_rayjob(naming.run_key(namespace, name), patched)
        return patched

    async def _find_workload(self, namespace: str, rayjob: JSON) -> JSON | None:
        selector = f"{naming.KUEUE_JOB_UID_LABEL}={rayjob['metadata']['uid']}"
        workloads = await self.client.list(WORKLOADS, namespace, label_selector=selector)
        return max(workloads, key=lambda w: w["metadata"].get("creationTimestamp", ""), default=None)

    async def _apply_kueue_suspend(self, workload: JSON | None, suspend: bool) -> None:
        """Kueue re-admits a suspended RayJob it holds quota for; deactivating its Workload is how to stop it."""
        if workload is None:
            return
        active = workload.get("spec", {}).get("active", True)
        if active == (not suspend):
            return
        meta = workload["metadata"]
        updated = await self.client.merge_patch(
            WORKLOADS, meta["namespace"], meta["name"], {"spec": {"active": not suspend}}
        )
        workload.clear()
        workload.update(updated)

    async def _expire(self, run: TrainingRun, rayjob: JSON) -> float | None:
        """Delete the finished run's RayJob once its TTL passed; otherwise the seconds left."""
        ttl = run.spec.ttl_seconds_after_finished
        done_at = run.status.completion_time
        if ttl is None or done_at is None:
            return None
        left = (done_at - now()).total_seconds() + ttl
        if left > 0:
            return left + 1
        await self.client.delete(RAYJOBS, run.metadata.namespace, rayjob["metadata"]["name"])
        self.cache.forget_rayjob(naming.run_key(run.metadata.namespace, run.metadata.name))
        log.info("deleted RayJob %s/%s: ttlSecondsAfterFinished passed", run.metadata.namespace, run.metadata.name)
        return None

    async def _notify(self, namespace: str, name: str) -> None:
        """The body as our own status write left it: its phase, and the resourceVersion the claim is conditional on."""
        body = await self.cache.load_run(namespace, name, fresh=False)
        if body is not None:
            await self.notifier.step(body)

    # ----------------------------------------------------------------------------- status

    async def _write_status(self, body: JSON, previous: TrainingRunStatus, observed: Observed) -> StatusUpdate | None:
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        update = await self.status.write(body, previous, observed)
        if update is None:
            self.forget(key)
        elif rejected(update.status):
            self._ensured.pop(key, None)  # a fixed spec must go through steps 2-4 again
        return update


def _owned_by(obj: JSON, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences", []) or [])
