"""Thin kopf wiring: watch events on a run or one of its children ask for one level-based reconcile.

Every child kind the registry declares (`children.REGISTRY`) is watched by one generic handler and kept per run
from the watch events (primed by one LIST per kind at startup), so a reconcile reads them instead of the API server.
When kopf lists a kind again (its watch expired: 410 Gone), it reports only the objects that exist; the operator
then lists that kind itself and replaces what it caches of it (`relist`), so that what was deleted in the gap is
forgotten, not kept as a ghost: runs, Evaluations and every child kind alike. The slow resync does the same for
every kind before it reconciles every run and Evaluation.
Events the operator caused itself (the echo of its own write) and run updates that touch only what the trainer
writes (progress, metrics, ...) do not cause a reconcile of that run; every event of a run does reconcile the runs
waiting for its checkpoint (spec.model.fromRun).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kopf._cogs.clients import watching  # the watch stream, for the end of each LIST (see _hear_kopf_listings)
from kopf._cogs.structs.references import NamespaceName, match_namespace  # kopf's reading of namespace patterns
from prometheus_client import start_http_server

from loka_api import kinds
from loka_operator import lineage, naming
from loka_operator.cache import Children, InScope, ListScope, RunCache, relist_children, relist_runs
from loka_operator.children import CHILDREN, EVALUATION_CHILDREN, REGISTRY, WORKLOAD, ChildKind, by_cycle_label
from loka_operator.config import OperatorConfig
from loka_operator.credentials import login
from loka_operator.cycles import CycleReconciler
from loka_operator.evaluations import EvaluationReconciler
from loka_operator.kube import KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.reconcile import Reconciler
from loka_operator.workqueue import RunQueue

log = logging.getLogger(__name__)


@dataclass
class Shared:
    """What main() made before kopf started (it also serves the standby): the API client and the metrics."""

    client: KubeClient
    metrics: OperatorMetrics


# How long after the last object kopf reports listed the operator lists that kind itself (kopf's burst is over).
RELIST_DELAY_SECONDS = 1.0
# ... and how long it waits to try again when that LIST failed.
RELIST_RETRY_SECONDS = 5.0
RUNS = kinds.TRAINING_RUN.kind  # the runs' name among the kinds to relist (the children's: `ChildKind.name`)
EVALUATIONS = kinds.EVALUATION.kind
CYCLES = kinds.REWARD_CYCLE.kind


@dataclass
class OperatorState:
    client: KubeClient
    reconciler: Reconciler
    queue: RunQueue
    metrics: OperatorMetrics
    scope: ListScope
    evaluations: EvaluationReconciler
    evaluation_queue: RunQueue
    cycles: CycleReconciler
    cycle_queue: RunQueue
    resync: asyncio.Task[None] | None = None
    owns_client: bool = False
    # Kinds kopf listed again, waiting for the operator's own LIST; the task that makes it.
    relist_wanted: set[str] = field(default_factory=set)
    relist_due: float = 0.0  # loop time: a second after the last object kopf listed
    relisting: asyncio.Task[None] | None = None
    relist_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.loka
    return state


def _config(memo: Any) -> OperatorConfig:
    """main() hands its settings over in kopf's memo; `kopf run` without main() reads the environment."""
    config = getattr(memo, "config", None)
    return config if isinstance(config, OperatorConfig) else OperatorConfig.from_env()


@kopf.on.login()
def authenticate(**_: Any) -> kopf.ConnectionInfo:
    # Read again on every call: kopf calls this whenever the API server refuses the current credentials.
    return login()


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled" copies: kopf deep-copies every watched object (status and managedFields included) at every
    event to work out what changed for on.create/on.update handlers, and Loka has none: its handlers are on.event
    and compare what the operator caches itself. With 500 runs launching, that copy was a fifth of the operator's
    CPU. (`tests/unit/operator/test_main.py` fails if one is ever registered.)"""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config = _config(memo)
    # Namespace patterns (`team-*`) need kopf to watch namespaces; exact names and cluster-wide need no scanning.
    settings.scanning.disabled = not any(_is_pattern(ns) for ns in config.namespaces)
    settings.watching.server_timeout = 300
    # Every Event goes through the operator's own recorder, whose writes the leader Lease fences; kopf's would not be.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    # Server-side filters: the API server sends only the operator's own children.
    selectors = child_selectors(config)
    for gvr, selector in watch_selectors(selectors).items():
        settings.watching.label_selectors[gvr] = selector
    shared = getattr(memo, "shared", None)
    if not isinstance(shared, Shared):  # `kopf run` without main(): no standby, no leader election
        metrics = OperatorMetrics()
        metrics.leader.set(1)
        if config.metrics_port:
            start_http_server(config.metrics_port, registry=metrics.registry)
        shared = Shared(KubeClient(login(), relogin=login, on_request=_counter(metrics)), metrics)
    metrics, client = shared.metrics, shared.client
    reconciler = Reconciler(client=client, config=config, metrics=metrics)
    evaluations = EvaluationReconciler(reconciler)
    reconciler.evaluations = evaluations.cache  # runs that train on an Evaluation's pairs read it there
    cycles = CycleReconciler(reconciler, evaluations)  # reads its stages in the run and Evaluation caches
    scope = ListScope(
        [None] if not config.namespaces or any(map(_is_pattern, config.namespaces)) else [*config.namespaces],
        selectors,
        in_scope(config.namespaces),
    )
    # Before the watches start: a run's first reconcile must already see every child that exists.
    children = reconciler.children
    await relist_children(children, client, scope)
    await relist_children(evaluations.children, client, scope, EVALUATION_CHILDREN)
    primed = children.count() + evaluations.children.count()

    async def reconcile_one(key: str, drift: bool) -> float | None:
        return await _reconcile_counted(reconciler, key, drift)

    async def reconcile_evaluation(key: str, drift: bool) -> float | None:
        return await _reconcile_counted(evaluations, key, drift)

    async def reconcile_cycle(key: str, drift: bool) -> float | None:
        return await _reconcile_counted(cycles, key, drift)

    async def _reconcile_counted(
        target: Reconciler | EvaluationReconciler | CycleReconciler, key: str, drift: bool
    ) -> float | None:
        namespace, name = naming.split_key(key)
        started = time.monotonic()
        metrics.in_flight.inc()
        try:
            outcome = await target.reconcile(namespace, name, drift=drift)
        except Exception:
            metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            metrics.in_flight.dec()
            metrics.reconcile_seconds.observe(time.monotonic() - started)
        metrics.reconciles.labels(result="requeue" if outcome.requeue_after else "success").inc()
        return outcome.requeue_after

    queue = RunQueue(reconcile_one, max_concurrent=config.max_concurrent_reconciles)
    evaluation_queue = RunQueue(reconcile_evaluation, max_concurrent=config.max_concurrent_reconciles)
    cycle_queue = RunQueue(reconcile_cycle, max_concurrent=config.max_concurrent_reconciles)
    state = OperatorState(
        client,
        reconciler,
        queue,
        metrics,
        scope,
        evaluations,
        evaluation_queue,
        cycles,
        cycle_queue,
        owns_client=getattr(memo, "shared", None) is None,
    )
    memo.loka = state
    state.resync = asyncio.get_running_loop().create_task(_resync_forever(state, config), name="loka resync")
    _hear_kopf_listings(state)
    log.info(
        "loka-operator started (namespaces: %s, submission mode %s, resync every %ss, %d children known)",
        ", ".join(config.namespaces) or "all",
        config.rayjob.submission_mode,
        config.resync_seconds,
        primed,
    )


def child_selectors(config: OperatorConfig) -> dict[ChildKind, str]:
    """The label selector each child kind is watched and listed with (Workloads: as the operator is configured)."""
    selectors = {child: child.selector for child in REGISTRY if child.watched}
    selectors[WORKLOAD] = config.workload_selector
    return selectors


def watch_selectors(selectors: Mapping[ChildKind, str]) -> dict[tuple[str, str, str], str]:
    """The one label selector each watched resource gets (kopf opens one watch per resource): a kind two entries
    share (the environment servers' and the reward models' Deployments) is watched for both components, and each
    entry's handler keeps only its own (its ``labels``)."""
    by_gvr: dict[tuple[str, str, str], list[ChildKind]] = {}
    for child in selectors:
        by_gvr.setdefault(child.kind.gvr, []).append(child)
    out: dict[tuple[str, str, str], str] = {}
    for gvr, entries in by_gvr.items():
        distinct = {selectors[child] for child in entries}
        if len(distinct) == 1:
            if selector := distinct.pop():
                out[gvr] = selector
            continue
        components = sorted({child.component for child in entries if child.component is not None})
        if len(components) != len(entries) or any(selectors[c] != c.selector for c in entries):
            raise ValueError(f"child kinds of {gvr} differ in more than their component: {sorted(distinct)}")
        out[gvr] = (
            f"{naming.LABEL_MANAGED_BY}={naming.OPERATOR_NAME},{naming.LABEL_COMPONENT} in ({','.join(components)})"
        )
    return out


def in_scope(namespaces: Collection[str]) -> InScope:
    """Whether a namespace is one the operator watches (no namespaces: every one), as kopf reads the patterns."""
    return lambda namespace: not namespaces or any(match_namespace(NamespaceName(namespace), p) for p in namespaces)


def _counter(metrics: OperatorMetrics) -> Any:
    return lambda verb: metrics.api_requests.labels(verb=verb).inc()


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    state = _state(memo)
    for task in (state.resync, state.relisting):
        if task is not None:
            task.cancel()
    await state.queue.drain()
    await state.evaluation_queue.drain()
    await state.cycle_queue.drain()
    await state.reconciler.status.events.close()
    await state.reconciler.notifier.close()
    if state.owns_client:
        await state.client.close()


@kopf.on.probe(id="reconcilesInFlight")
def reconciles_in_flight(memo: Any, **_: Any) -> int:
    return _state(memo).queue.busy()


async def relist(state: OperatorState, wanted: Collection[str] | None = None) -> None:
    """One LIST per kind (`wanted`: their names, None: every kind) replaces what the caches hold of it: runs the list
    lacks are forgotten, runs whose children it added, changed or removed are reconciled."""
    async with state.relist_lock:
        reconciler, evaluations = state.reconciler, state.evaluations
        await _relist_parents(state, wanted, RUNS, "run", reconciler.cache, reconciler.children, CHILDREN,
                              _forget_run, state.queue)  # fmt: skip
        await _relist_parents(state, wanted, EVALUATIONS, "Evaluation", evaluations.cache, evaluations.children,
                              EVALUATION_CHILDREN, _forget_evaluation, state.evaluation_queue)  # fmt: skip
        # A cycle's stages are runs and Evaluations: it has no children of its own.
        await _relist_kind(state, wanted, CYCLES, "RewardCycle", state.cycles.cache, _forget_cycle, state.cycle_queue)


async def _relist_parents(  # noqa: PLR0917 - one parent kind's caches, children and queue, as relist names them
    state: OperatorState,
    wanted: Collection[str] | None,
    kind: str,
    noun: str,
    cache: RunCache,
    children: Children,
    child_kinds: Iterable[ChildKind],
    forget: Callable[[OperatorState, str], None],
    queue: RunQueue,
) -> None:
    """Relist one parent kind (runs or Evaluations) and its children: forget the parents gone, reconcile the ones
    whose object or children changed."""
    await _relist_kind(state, wanted, kind, noun, cache, forget, queue)
    listed = [child for child in child_kinds if wanted is None or child.name in wanted]
    for key in await relist_children(children, state.client, state.scope, listed):
        if cache.known(key):
            queue.request(key)


async def _relist_kind(  # noqa: PLR0917 - one kind's cache and queue, as relist names them
    state: OperatorState,
    wanted: Collection[str] | None,
    kind: str,
    noun: str,
    cache: RunCache,
    forget: Callable[[OperatorState, str], None],
    queue: RunQueue,
) -> None:
    """Relist one kind of parent (runs, Evaluations, RewardCycles): forget the gone, reconcile the changed."""
    if wanted is not None and kind not in wanted:
        return
    changed, gone = await relist_runs(cache, state.client, state.scope)
    for key in gone:
        log.info("%s %s is gone (deleted while the watch was away): forgetting it", noun, key)
        forget(state, key)
    for key in changed:
        queue.request(key)


def _hear_kopf_listings(state: OperatorState) -> None:
    """kopf tells its handlers of a LIST only through the objects it found (type=None events), so an empty list (the
    last run of a namespace deleted while the watch was away) says nothing. Its watch stream marks the end of every
    LIST (Bookmark.LISTED) but keeps it to itself: wrap the stream so that the mark reaches `_listed_again` too."""
    by_resource = {(kinds.TRAINING_RUN.group, kinds.TRAINING_RUN.plural): RUNS}
    by_resource[kinds.EVALUATION.group, kinds.EVALUATION.plural] = EVALUATIONS
    by_resource[kinds.REWARD_CYCLE.group, kinds.REWARD_CYCLE.plural] = CYCLES
    by_resource |= {(child.kind.group, child.kind.plural): child.name for child in REGISTRY}
    original = getattr(watching, "infinite_watch", None)
    original = getattr(original, "loka_wrapped", original)
    if original is None:
        log.warning("kopf's watch stream is not where expected; an empty relist goes unnoticed until the resync")
        return

    async def infinite_watch(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for event in original(resource=resource, **kwargs):
            if event is watching.Bookmark.LISTED and (kind := by_resource.get((resource.group, resource.plural))):
                _listed_again(state, kind)
            yield event

    infinite_watch.loka_wrapped = original  # type: ignore[attr-defined]
    watching.infinite_watch = infinite_watch


def _listed_again(state: OperatorState, kind: str) -> None:
    """kopf listed this kind (at start, or after its watch expired) and reports only what exists: list it too, once
    kopf's burst is over, to learn what was deleted in the gap."""
    loop = asyncio.get_running_loop()
    state.relist_wanted.add(kind)
    state.relist_due = loop.time() + RELIST_DELAY_SECONDS
    if state.relisting is None or state.relisting.done():
        state.relisting = loop.create_task(_relist_soon(state), name="loka relist")


async def _relist_soon(state: OperatorState) -> None:
    loop = asyncio.get_running_loop()
    while state.relist_wanted:
        if (wait := state.relist_due - loop.time()) > 0:
            await asyncio.sleep(wait)  # one relist for a whole burst of listed objects
            continue
        wanted, state.relist_wanted = state.relist_wanted, set()
        try:
            await relist(state, wanted)
        except Exception:
            log.exception("listing %s again failed; retrying in %ss", ", ".join(sorted(wanted)), RELIST_RETRY_SECONDS)
            state.relist_wanted |= wanted
            state.relist_due = loop.time() + RELIST_RETRY_SECONDS


async def _resync_forever(state: OperatorState, config: OperatorConfig) -> None:
    """The slow pass: every kind listed again (the caches replaced), then every run reconciled again, spread over the
    interval."""
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            await relist(state)
        except Exception:
            log.exception("the resync could not list runs and children; reconciling from the caches")
        state.reconciler.new_resync_period()
        for cache, queue in (
            (state.reconciler.cache, state.queue),
            (state.evaluations.cache, state.evaluation_queue),
            (state.cycles.cache, state.cycle_queue),
        ):
            keys = cache.keys()
            for index, key in enumerate(keys):
                # Spread the pass over the interval instead of a thundering herd.
                queue.request_after(key, config.resync_seconds * index / len(keys), drift=True)


def _is_pattern(namespace: str) -> bool:
    return any(ch in namespace for ch in "*?[!,")


# --------------------------------------------------------------------------------------------- runs


@kopf.on.event(*kinds.TRAINING_RUN.gvr)
async def run_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", body.metadata.name or "")
    if type is None:
        _listed_again(state, RUNS)
    if type == "DELETED":
        _forget_run(state, key)
        _wake_source(state, dict(body))
        _wake_cycle(state, dict(body))
        return
    if state.reconciler.cache.observe(dict(body)):
        state.queue.request(key)
    _wake_dependents(state, key)
    _wake_source(state, dict(body))
    _wake_cycle(state, dict(body))


def _forget_run(state: OperatorState, key: str) -> None:
    state.queue.forget(key)
    state.reconciler.forget(key)
    _wake_dependents(state, key)


def _wake_dependents(state: OperatorState, key: str) -> None:
    """Runs waiting for this one's checkpoint (fromRun): its phase and checkpoint are what they wait on, whether the
    trainer or this operator wrote them, and its deletion fails them."""
    for dependent in state.reconciler.dependents(key):
        state.queue.request(dependent)
    # Evaluations waiting for this run's rollouts (spec.rollouts.fromRun).
    for dependent in state.evaluations.dependents(key):
        state.evaluation_queue.request(dependent)


# --------------------------------------------------------------------------------------- evaluations


@kopf.on.event(*kinds.EVALUATION.gvr)
async def evaluation_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", body.metadata.name or "")
    if type is None:
        _listed_again(state, EVALUATIONS)
    if type == "DELETED":
        _forget_evaluation(state, key, dict(body))
        return
    if state.evaluations.cache.observe(dict(body)):
        state.evaluation_queue.request(key)
    _wake_evaluation_dependents(state, key, dict(body))


def _forget_evaluation(state: OperatorState, key: str, body: dict[str, Any] | None = None) -> None:
    """The Evaluation is gone (``body``: its last known state, to wake its cycle)."""
    body = body or state.evaluations.cache.run(key)
    state.evaluation_queue.forget(key)
    state.evaluations.forget(key)
    _wake_evaluation_dependents(state, key, body)


def _wake_evaluation_dependents(state: OperatorState, key: str, body: dict[str, Any] | None) -> None:
    """Runs waiting for this Evaluation's preference pairs (spec.data.fromEvaluation): its phase is what they wait
    on, and its deletion fails them; and the RewardCycle that made it."""
    for dependent in state.reconciler.evaluation_dependents(key):
        state.queue.request(dependent)
    if body is not None:
        _wake_cycle(state, body)


def _wake_cycle(state: OperatorState, body: dict[str, Any]) -> None:
    """A stage of a RewardCycle (a TrainingRun or an Evaluation it made) changed or went: its cycle looks again."""
    cycle = by_cycle_label(body)
    if cycle is not None and state.cycles.cache.known(cycle):
        state.cycle_queue.request(cycle)


# -------------------------------------------------------------------------------------------- cycles


def _forget_cycle(state: OperatorState, key: str) -> None:
    state.cycle_queue.forget(key)
    state.cycles.forget(key)


@kopf.on.event(*kinds.REWARD_CYCLE.gvr)
async def cycle_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", body.metadata.name or "")
    if type == "DELETED":
        _forget_cycle(state, key)
    elif state.cycles.cache.observe(dict(body)):
        state.cycle_queue.request(key)


def _wake_source(state: OperatorState, body: dict[str, Any]) -> None:
    """The run this one starts from keeps the checkpoint it recorded pinned until it has one of its own, ends or
    goes (a served reward model's source: until it ends or goes): their status.pins follow this run's."""
    for source in lineage.source_keys_of(body):
        if state.reconciler.cache.known(source):
            state.queue.request(source)


# ------------------------------------------------------------------------------------------ children


async def child_changed(type: str | None, body: kopf.Body, memo: Any, param: Any = None, **_: Any) -> None:
    """Keep the child (of kind ``param``) in the cache; reconcile its run unless this is the echo of our own write."""
    child: ChildKind = param
    state = _state(memo)
    if type is None:
        _listed_again(state, child.name)
    key = child.run_of(body)
    if key is None:
        return
    owner = state.evaluations if child.parent == kinds.EVALUATION else state.reconciler
    queue = state.evaluation_queue if child.parent == kinds.EVALUATION else state.queue
    children = owner.children
    if type == "DELETED":
        children.gone(child, key, body)
    elif not children.observe(child, key, body) or children.is_echo(child, dict(body)):
        return  # not the run's (another RayJob's Workload), or the echo of our own write
    if owner.cache.known(key):
        queue.request(key)


def watch_children(watched: Iterable[ChildKind], registry: kopf.OperatorRegistry) -> None:
    """The one handler above, registered for each child kind (kopf hands it the kind as ``param``)."""
    for child in watched:
        if not child.watched:
            continue
        prefix = "" if child.parent == kinds.TRAINING_RUN else f"{child.parent.kind.lower()}-"
        # A side service's kinds are shared by several entries (environment servers, reward models): one id each.
        infix = f"-{child.component}" if child.build is not None else ""
        kopf.on.event(
            *child.kind.gvr,
            id=f"{prefix}{child.kind.plural}{infix}-changed",
            labels=child.labels or None,
            param=child,
            registry=registry,
        )(child_changed)


watch_children(REGISTRY, kopf.get_default_registry())
