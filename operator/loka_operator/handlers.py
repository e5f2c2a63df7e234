"""Thin kopf wiring: every watch event on a run or one of its children asks for one level-based reconcile."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client import start_http_server

from loka_api import GROUP, PLURAL, VERSION
from loka_operator import naming
from loka_operator.config import OperatorConfig
from loka_operator.kube import TRAINING_RUNS, KubeClient, login
from loka_operator.metrics import OperatorMetrics
from loka_operator.reconcile import Reconciler
from loka_operator.workqueue import RunQueue

log = logging.getLogger(__name__)


@dataclass
class OperatorState:
    client: KubeClient
    reconciler: Reconciler
    queue: RunQueue
    metrics: OperatorMetrics
    resync: asyncio.Task[None] | None = None


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.loka
    return state


def _config(memo: Any) -> OperatorConfig:
    """main() hands its settings over in kopf's memo; `kopf run` without main() reads the environment."""
    config = getattr(memo, "config", None)
    return config if isinstance(config, OperatorConfig) else OperatorConfig.from_env()


@kopf.on.login()
def authenticate(**_: Any) -> kopf.ConnectionInfo:
    # The same credentials as the reconcile client: the kubeconfig, else the pod's service account.
    return login()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config = _config(memo)
    # Namespace patterns (`team-*`) need kopf to watch namespaces; exact names and cluster-wide need no scanning.
    settings.scanning.disabled = not any(_is_pattern(ns) for ns in config.namespaces)
    settings.watching.server_timeout = 300
    settings.posting.level = logging.WARNING
    metrics = OperatorMetrics()
    client = KubeClient(login(), on_request=lambda verb: metrics.api_requests.labels(verb=verb).inc())
    reconciler = Reconciler(client=client, config=config, metrics=metrics)

    async def reconcile_one(key: str, drift: bool) -> float | None:
        namespace, name = naming.split_key(key)
        started = time.monotonic()
        metrics.in_flight.inc()
        try:
            outcome = await reconciler.reconcile(namespace, name, drift=drift)
        except Exception:
            metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            metrics.in_flight.dec()
            metrics.reconcile_seconds.observe(time.monotonic() - started)
        metrics.reconciles.labels(result="requeue" if outcome.requeue_after else "success").inc()
        return outcome.requeue_after

    queue = RunQueue(reconcile_one, max_concurrent=config.max_concurrent_reconciles)
    state = OperatorState(client=client, reconciler=reconciler, queue=queue, metrics=metrics)
    memo.loka = state
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    state.resync = asyncio.get_running_loop().create_task(_resync_forever(state, config), name="loka drift repair")
    log.info(
        "loka-operator started (namespaces: %s, submission mode %s, metrics on :%s)",
        ", ".join(config.namespaces) or "all",
        config.rayjob.submission_mode,
        config.metrics_port,
    )


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    state = _state(memo)
    if state.resync is not None:
        state.resync.cancel()
    await state.queue.drain()
    await state.reconciler.notifier.close()
    await state.client.close()


@kopf.on.probe(id="reconcilesInFlight")
def reconciles_in_flight(memo: Any, **_: Any) -> int:
    return _state(memo).queue.busy()


async def _resync_forever(state: OperatorState, config: OperatorConfig) -> None:
    """The slow drift-repair pass: every run is reconciled from fresh reads, spread over the interval."""
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            keys = await _all_runs(state.client, config.namespaces)
        except Exception:
            log.exception("drift-repair listing failed; next pass in %ss", config.resync_seconds)
            continue
        for index, key in enumerate(keys):
            # Spread the pass over the interval instead of a thundering herd.
            state.queue.request_after(key, config.resync_seconds * index / len(keys), drift=True)


def _is_pattern(namespace: str) -> bool:
    return any(ch in namespace for ch in "*?[")


async def _all_runs(client: KubeClient, namespaces: tuple[str, ...]) -> list[str]:
    """Keys of every run in scope; namespace patterns (kopf globs like `team-*`) need a cluster-wide list."""
    patterns = [ns for ns in namespaces if _is_pattern(ns)]
    scopes: list[str | None] = [None] if not namespaces or patterns else list(namespaces)
    keys: list[str] = []
    for scope in scopes:
        for run in await client.list(TRAINING_RUNS, scope):
            namespace = run["metadata"]["namespace"]
            if not namespaces or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in namespaces):
                keys.append(naming.run_key(namespace, run["metadata"]["name"]))
    return keys


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", body.metadata.name or "")
    if type == "DELETED":
        state.reconciler.forget(key)
        state.queue.forget(key)
    else:
        state.reconciler.cache.remember_run(dict(body))
        state.queue.request(key)
    for dependent in state.reconciler.dependents(key):  # runs waiting for this one's checkpoint (fromRun)
        state.queue.request(dependent)


@kopf.on.event(naming.RAY_GROUP, naming.RAY_VERSION, "rayjobs", labels={naming.LABEL_MANAGED_BY: naming.OPERATOR_NAME})
async def rayjob_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    run = body.metadata.labels.get(naming.LABEL_RUN)
    if not run:
        return
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", run)
    if type == "DELETED":
        state.reconciler.cache.forget_rayjob(key)
    else:
        state.reconciler.cache.remember_rayjob(key, dict(body))
    state.queue.request(key)


def _owner_rayjob(body: kopf.Body) -> str | None:
    for ref in body.metadata.get("ownerReferences", []) or []:
        if ref.get("kind") == "RayJob" and str(ref.get("apiVersion", "")).startswith(f"{naming.RAY_GROUP}/"):
            name: str = ref.get("name", "")
            return name
    return None


@kopf.on.event(naming.KUEUE_GROUP, naming.KUEUE_VERSION, "workloads")
async def workload_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    rayjob = _owner_rayjob(body)
    if rayjob is None:
        return
    state = _state(memo)
    key = naming.run_key(body.metadata.namespace or "", rayjob)  # a run's RayJob carries the run's name
    if state.reconciler.cache.known(key):
        state.queue.request(key)
