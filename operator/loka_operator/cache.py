"""What a reconcile reads instead of the API server: watch-backed views of runs and their children.

- Runs: the latest body each watch event delivered (`RunCache`).
- Children (every kind in `children.CHILDREN`): kept per run from kopf's watch events, trimmed as each kind's entry
  says, primed at startup by one LIST per kind, so that a run's first reconcile already sees every child that
  exists (`Children`).
- A relist (`RunCache.replace`, `Children.replace`): what one LIST from the API server returned replaces a kind's
  contents, as client-go's informer does on a relist. A watch that expired (410 Gone) is listed again by kopf,
  which reports only what exists, never what was deleted in the gap; without the replacement those stay cached as
  ghosts. An entry the watch delivered after the LIST began is newer than the list and is kept; one the watch
  deleted after the LIST began is not brought back.
- Our own writes (`WriteLedger`): the body a create or patch returned is newer than what the watch showed when
  the write was made. A resourceVersion is opaque (only equality means anything), so the ledger keeps the
  written body until the watch shows anything other than what it showed then (the echo of the write, or a
  later change: kopf may skip an intermediate version when a newer one follows at once), or a few seconds pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from loka_api import kinds
from loka_api.contract import TRAINER_FAILURE_FIELD, TRAINER_STATUS_FIELDS
from loka_api.kinds import Kind
from loka_operator import naming
from loka_operator.children import CHILDREN, LAST_APPLIED, ChildKind
from loka_operator.kube import JSON, KubeClient

# How long our own write outranks what the watch shows, when the watch never echoes it exactly.
ECHO_WAIT_SECONDS = 5.0

ObjectRef = tuple[str, str, str]  # kind, namespace, name
# What no reconcile reads of a run's metadata (the children keep only `children.KEPT_METADATA`).
DROPPED_METADATA = frozenset({"managedFields", "annotations"})
DROPPED_ANNOTATIONS = frozenset({LAST_APPLIED})


def resource_version(body: Mapping[str, Any] | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion", ""))


def ref_of(kind: str, body: JSON) -> ObjectRef:
    meta = body["metadata"]
    return kind, meta.get("namespace", ""), meta["name"]


@dataclass
class _Written:
    body: JSON | None  # None: we deleted it
    version: str
    seen_before: str  # the resourceVersion the watch showed when we wrote ("" when it showed nothing)
    until: float


@dataclass
class WriteLedger:
    _written: dict[ObjectRef, _Written] = field(default_factory=dict)

    def wrote(self, ref: ObjectRef, body: JSON | None, *, seen_before: JSON | None) -> None:
        """Remember what a write returned (None for a delete) and what the watch showed at the time."""
        until = time.monotonic() + ECHO_WAIT_SECONDS
        self._written[ref] = _Written(body, resource_version(body), resource_version(seen_before), until)

    def is_echo(self, ref: ObjectRef, observed: JSON) -> bool:
        written = self._written.get(ref)
        return written is not None and written.body is not None and written.version == resource_version(observed)

    def newest(self, ref: ObjectRef, observed: JSON | None) -> JSON | None:
        """What we wrote, until the watch shows something new since; otherwise what the watch shows."""
        written = self._written.get(ref)
        if written is None:
            return observed
        moved = resource_version(observed) != written.seen_before
        if moved or time.monotonic() > written.until:
            del self._written[ref]
            return observed
        return written.body

    def forget(self, namespace: str, names: Collection[str]) -> None:
        for ref in [r for r in self._written if r[1] == namespace and r[2] in names]:
            del self._written[ref]


# A trainer's failure report is the exception: a permanent one ends the run at once.
RUN_REPORTER_FIELDS = tuple(f for f in TRAINER_STATUS_FIELDS if f != TRAINER_FAILURE_FIELD)


def _without_trainer_status(body: JSON, ignored: Collection[str] = RUN_REPORTER_FIELDS) -> JSON:
    status = {k: v for k, v in (body.get("status") or {}).items() if k not in ignored}
    meta = {k: v for k, v in body.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {"metadata": meta, "spec": body.get("spec"), "status": status}


def trimmed_run(body: JSON) -> JSON:
    """A run as the cache keeps it: what reconcile reads. The API server's field bookkeeping (managedFields) and
    kubectl's copy of the applied manifest (an annotation as large as the spec) are most of a stored run's bytes."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in DROPPED_ANNOTATIONS}
    kept = {k: v for k, v in meta.items() if k not in DROPPED_METADATA}
    if annotations:
        kept["annotations"] = annotations
    return {**body, "metadata": kept}


def only_trainer_fields_changed(old: JSON | None, new: JSON, ignored: Collection[str] = RUN_REPORTER_FIELDS) -> bool:
    """True when nothing but the trainer's own status fields (progress, metrics, ...) differ: no reconcile needed."""
    return old is not None and _without_trainer_status(old, ignored) == _without_trainer_status(new, ignored)


@dataclass
class Freshness:
    """When each cached entry was last delivered and which were deleted, counted in events (not seconds), so that
    a relist can tell what the watch delivered after its LIST began."""

    _tick: int = 0
    _seen: dict[str, int] = field(default_factory=dict)  # by uid
    _deleted: dict[str, int] = field(default_factory=dict)  # by uid: deletions not yet covered by a relist

    def now(self) -> int:
        """The mark to take before a LIST: what happens after it is newer than the list."""
        self._tick += 1
        return self._tick

    def seen(self, uid: str) -> None:
        self._seen[uid] = self.now()

    def deleted(self, uid: str) -> None:
        self._seen.pop(uid, None)
        self._deleted[uid] = self.now()

    def newer_than_list(self, uid: str, since: int) -> bool:
        """The watch delivered or deleted it after the LIST began: the list's view of it is stale."""
        return self._seen.get(uid, 0) > since or self._deleted.get(uid, 0) > since

    def relisted(self, since: int) -> None:
        """A relist from `since` is done: the deletions before it are in every later list."""
        self._deleted = {uid: tick for uid, tick in self._deleted.items() if tick > since}


def uid_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid", ""))


@dataclass
class RunCache:
    """The latest body of every run in scope, as the watch delivered it or our own status write returned it (or of
    every Evaluation: ``kind``, whose pod reports ``reporter_fields``)."""

    ledger: WriteLedger = field(default_factory=WriteLedger)
    kind: Kind = kinds.TRAINING_RUN
    reporter_fields: Collection[str] = RUN_REPORTER_FIELDS
    # The keys of the objects a body names as its sources (runs: spec.model.fromRun and the reward models'
    # fromRun), indexed so that a source finds its dependents without reading every object of its namespace.
    sources_of: Callable[[JSON], Collection[str]] | None = None
    _runs: dict[str, JSON] = field(default_factory=dict)
    _dependents: dict[str, set[str]] = field(default_factory=dict)
    freshness: Freshness = field(default_factory=Freshness)

    def _store(self, key: str, body: JSON) -> JSON | None:
        old = self._runs.get(key)
        self._runs[key] = body
        self._index(key, old, body)
        return old

    def _index(self, key: str, old: JSON | None, new: JSON | None) -> None:
        sources_of = self.sources_of
        if sources_of is None:
            return
        before = set(sources_of(old)) if old is not None else set()
        after = set(sources_of(new)) if new is not None else set()
        for source in before - after:
            dependents = self._dependents.get(source, set())
            dependents.discard(key)
            if not dependents:
                self._dependents.pop(source, None)
        for source in after - before:
            self._dependents.setdefault(source, set()).add(key)

    def dependents(self, key: str) -> list[str]:
        """The cached objects that name ``key`` as a source (a superset of those that still need it)."""
        return sorted(self._dependents.get(key, ()))

    def observe(self, body: JSON) -> bool:
        """Record a watch event; True when it may change what the operator does (worth a reconcile)."""
        body = trimmed_run(body)
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        old = self._store(key, body)
        self.freshness.seen(uid_of(body))
        ref = ref_of(self.kind.kind, body)
        if self.ledger.is_echo(ref, body):
            return False  # the echo of our own status write: the reconcile that wrote it saw everything
        return not only_trainer_fields_changed(old, body, self.reporter_fields)

    def wrote(self, body: JSON) -> None:
        body = trimmed_run(body)
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        self.ledger.wrote(ref_of(self.kind.kind, body), body, seen_before=self._runs.get(key))
        if key not in self._runs:
            self._store(key, body)

    def run(self, key: str) -> JSON | None:
        namespace, name = naming.split_key(key)
        return self.ledger.newest((self.kind.kind, namespace, name), self._runs.get(key))

    def known(self, key: str) -> bool:
        return key in self._runs

    def keys(self) -> list[str]:
        return list(self._runs)

    def forget(self, key: str) -> None:
        gone = self._runs.pop(key, None)
        if gone is not None:
            self.freshness.deleted(uid_of(gone))
            self._index(key, gone, None)
        namespace, name = naming.split_key(key)
        self.ledger.forget(namespace, {name})

    def replace(self, listed: Collection[JSON], since: int) -> tuple[list[str], list[str]]:
        """What a LIST begun at mark `since` returned replaces the cache: (runs it changed or added, runs it lacks).

        The caller forgets the lacking ones (everything known about them) and reconciles the changed ones."""
        by_key = {naming.run_key(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in listed}
        lacking = [
            key
            for key, body in self._runs.items()
            if key not in by_key and not self.freshness.newer_than_list(uid_of(body), since)
        ]
        changed = []
        for key, body in by_key.items():
            cached = self._runs.get(key)
            if self.freshness.newer_than_list(uid_of(body), since) or (
                cached is not None and self.freshness.newer_than_list(uid_of(cached), since)
            ):
                continue  # the watch told something after the LIST began: it is newer than the list
            fresh = cached is None or resource_version(cached) != resource_version(body)
            if fresh and (self.observe(body) or cached is None or uid_of(cached) != uid_of(body)):
                changed.append(key)
        self.freshness.relisted(since)
        return changed, lacking


@dataclass
class Children:
    """A run's children as the watches delivered them (keyed by child kind, run, then uid), our own recent writes on
    top. Two entries of one Kubernetes kind (the environment servers' and the reward models' Deployments) are kept
    apart: each entry's LIST, filtered by its component, replaces only its own."""

    ledger: WriteLedger
    _observed_by_kind: dict[ChildKind, dict[str, dict[str, JSON]]] = field(default_factory=dict)
    freshness: Freshness = field(default_factory=Freshness)

    def observe(self, child: ChildKind, key: str, body: Mapping[str, Any]) -> bool:
        """A child as a watch event or a LIST delivered it (kept trimmed to what reconcile reads); False when it is
        not the run's after all (a Workload of someone else's RayJob of the run's name), and is not kept."""
        if not self._made_for_the_run(child, key, body):
            self.gone(child, key, body)
            return False
        kept = child.trimmed(body)
        self._observed_by_kind.setdefault(child, {}).setdefault(key, {})[uid_of(kept)] = kept
        self.freshness.seen(uid_of(kept))
        return True

    def _made_for_the_run(self, child: ChildKind, key: str, body: Mapping[str, Any]) -> bool:
        """An object of an observed kind is the run's when the run's own child it was made for owns it (that child
        as the watch showed it, or as our create returned it before the watch did)."""
        parent = child.made_for
        if parent is None:
            return True
        owners = (body.get("metadata") or {}).get("ownerReferences") or []
        for ref in owners:
            if not parent.kind.owns(str(ref.get("apiVersion", "")), str(ref.get("kind", ""))):
                continue
            ours = self.get(parent, key, str(ref.get("name", "")))
            if ours is not None and uid_of(ours) == ref.get("uid"):
                return True
        return False

    def gone(self, child: ChildKind, key: str, body: Mapping[str, Any]) -> None:
        self.freshness.deleted(uid_of(body))
        by_uid = self._observed_by_kind.get(child, {}).get(key)
        if by_uid is not None:
            by_uid.pop(uid_of(body), None)
            if not by_uid:
                del self._observed_by_kind[child][key]

    def replace(self, child: ChildKind, listed: Collection[Mapping[str, Any]], since: int) -> set[str]:
        """What a LIST of this kind begun at mark `since` returned replaces what is cached of it; the runs whose
        children it added, changed or removed (worth a reconcile)."""
        listed_by_uid = {uid_of(b): b for b in listed if child.run_of(b) is not None}
        touched: set[str] = set()
        for key, by_uid in list(self._observed_by_kind.get(child, {}).items()):
            for uid in [u for u in by_uid if u not in listed_by_uid and not self.freshness.newer_than_list(u, since)]:
                self.gone(child, key, by_uid[uid])
                touched.add(key)
        for uid, body in listed_by_uid.items():
            owner = child.run_of(body)
            if owner is None or self.freshness.newer_than_list(uid, since):
                continue
            cached = self._observed_by_kind.get(child, {}).get(owner, {}).get(uid)
            if (cached is None or resource_version(cached) != resource_version(body)) and (
                self.observe(child, owner, body) or cached is not None
            ):
                touched.add(owner)
        self.freshness.relisted(since)
        return touched

    def forget(self, key: str) -> None:
        for by_key in self._observed_by_kind.values():
            by_key.pop(key, None)

    def count(self) -> int:
        return sum(len(by_uid) for by_key in self._observed_by_kind.values() for by_uid in by_key.values())

    def _observed(self, child: ChildKind, key: str) -> list[JSON]:
        return list(self._observed_by_kind.get(child, {}).get(key, {}).values())

    def bodies(self, child: ChildKind, key: str) -> list[JSON]:
        """Every child of this kind the run has, our own recent writes on top."""
        found = [self.ledger.newest(ref_of(child.name, b), b) for b in self._observed(child, key)]
        return [b for b in found if b is not None]

    def get(self, child: ChildKind, key: str, name: str) -> JSON | None:
        namespace, _ = naming.split_key(key)
        observed = next((b for b in self._observed(child, key) if b["metadata"]["name"] == name), None)
        return self.ledger.newest((child.name, namespace, name), observed)

    def wrote(self, child: ChildKind, key: str, body: JSON) -> None:
        name = body["metadata"]["name"]
        before = next((b for b in self._observed(child, key) if b["metadata"]["name"] == name), None)
        self.ledger.wrote(ref_of(child.name, body), body, seen_before=before)

    def deleted(self, child: ChildKind, key: str, name: str) -> None:
        namespace, _ = naming.split_key(key)
        before = next((b for b in self._observed(child, key) if b["metadata"]["name"] == name), None)
        self.ledger.wrote((child.name, namespace, name), None, seen_before=before)

    def is_echo(self, child: ChildKind, body: JSON) -> bool:
        return self.ledger.is_echo(ref_of(child.name, body), body)


InScope = Callable[[str], bool]  # whether the operator watches a namespace


@dataclass
class ListScope:
    """Where the operator lists: the namespaces to ask (None: every one), the label selector of each child kind, and
    which namespaces it watches (a pattern is listed across every namespace, then filtered)."""

    namespaces: list[str | None]
    selectors: Mapping[ChildKind, str]
    in_scope: InScope


async def _list(
    client: KubeClient, kind: Kind, namespaces: Collection[str | None], selector: str, in_scope: InScope
) -> list[JSON]:
    found: list[JSON] = []
    for namespace in namespaces:
        listed = await client.list(kind, namespace, label_selector=selector)
        # A list's items may leave out their kind (the list says it): each gets it back, as a watch event has it.
        found += [
            {"apiVersion": kind.api_version, "kind": kind.kind, **b}
            for b in listed
            if in_scope(str(b["metadata"].get("namespace", "")))
        ]
    return found


async def relist_children(
    children: Children,
    client: KubeClient,
    scope: ListScope,
    watched: Collection[ChildKind] = CHILDREN,
) -> set[str]:
    """Replace what is cached of each kind with one LIST per kind and namespace (None: every namespace); the runs
    whose children changed. At startup, before any run is reconciled (the watches only tell what changes after they
    start); after a watch expired; on every resync. One kind at a time: a relist must not drop a deletion that an
    older, slower LIST of the same kind could bring back."""
    touched: set[str] = set()
    for child in watched:
        since = children.freshness.now()
        selector = scope.selectors.get(child, child.selector)
        listed = await _list(client, child.kind, scope.namespaces, selector, scope.in_scope)
        touched |= children.replace(child, listed, since)
    return touched


async def relist_runs(runs: RunCache, client: KubeClient, scope: ListScope) -> tuple[list[str], list[str]]:
    """Replace the cached runs (or Evaluations: the cache's kind) with one LIST per namespace: (changed or added,
    gone)."""
    since = runs.freshness.now()
    return runs.replace(await _list(client, runs.kind, scope.namespaces, "", scope.in_scope), since)
