"""What a reconcile reads instead of the API server: watch-backed views of runs and their children.

- Runs: the latest body each watch event delivered (`RunCache`).
- Children (every kind in `children.CHILDREN`): kept per run from kopf's watch events, trimmed as each kind's entry
  says, primed at startup by one LIST per kind, so that a run's first reconcile already sees every child that
  exists (`Children`).
- Our own writes (`WriteLedger`): the body a create or patch returned is newer than what the watch showed when
  the write was made. A resourceVersion is opaque (only equality means anything), so the ledger keeps the
  written body until the watch shows anything other than what it showed then (the echo of the write, or a
  later change: kopf may skip an intermediate version when a newer one follows at once), or a few seconds pass.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from loka_api import kinds
from loka_api.contract import TRAINER_FAILURE_FIELD, TRAINER_STATUS_FIELDS
from loka_operator import naming
from loka_operator.children import CHILDREN, ChildKind
from loka_operator.kube import JSON, KubeClient

# How long our own write outranks what the watch shows, when the watch never echoes it exactly.
ECHO_WAIT_SECONDS = 5.0

ObjectRef = tuple[str, str, str]  # kind, namespace, name


def resource_version(body: JSON | None) -> str:
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


def _without_trainer_status(body: JSON) -> JSON:
    # A trainer's failure report is the exception: a permanent one ends the run at once.
    ignored = set(TRAINER_STATUS_FIELDS) - {TRAINER_FAILURE_FIELD}
    status = {k: v for k, v in (body.get("status") or {}).items() if k not in ignored}
    meta = {k: v for k, v in body.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {"metadata": meta, "spec": body.get("spec"), "status": status}


def only_trainer_fields_changed(old: JSON | None, new: JSON) -> bool:
    """True when nothing but the trainer's own status fields (progress, metrics, ...) differ: no reconcile needed."""
    return old is not None and _without_trainer_status(old) == _without_trainer_status(new)


@dataclass
class RunCache:
    """The latest body of every run in scope, as the watch delivered it or our own status write returned it."""

    ledger: WriteLedger = field(default_factory=WriteLedger)
    _runs: dict[str, JSON] = field(default_factory=dict)

    def observe(self, body: JSON) -> bool:
        """Record a watch event; True when it may change what the operator does (worth a reconcile)."""
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        old = self._runs.get(key)
        self._runs[key] = body
        ref = ref_of(kinds.TRAINING_RUN.kind, body)
        if self.ledger.is_echo(ref, body):
            return False  # the echo of our own status write: the reconcile that wrote it saw everything
        return not only_trainer_fields_changed(old, body)

    def wrote(self, body: JSON) -> None:
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        self.ledger.wrote(ref_of(kinds.TRAINING_RUN.kind, body), body, seen_before=self._runs.get(key))
        self._runs.setdefault(key, body)

    def run(self, key: str) -> JSON | None:
        namespace, name = naming.split_key(key)
        return self.ledger.newest((kinds.TRAINING_RUN.kind, namespace, name), self._runs.get(key))

    def known(self, key: str) -> bool:
        return key in self._runs

    def keys(self) -> list[str]:
        return list(self._runs)

    def forget(self, key: str) -> None:
        self._runs.pop(key, None)
        namespace, name = naming.split_key(key)
        self.ledger.forget(namespace, {name})


@dataclass
class Children:
    """A run's children as the watches delivered them (keyed by kind, run, then uid), our own recent writes on top."""

    ledger: WriteLedger
    _observed_by_kind: dict[str, dict[str, dict[str, JSON]]] = field(default_factory=dict)

    def observe(self, child: ChildKind, key: str, body: Mapping[str, Any]) -> None:
        """A child as a watch event or the startup LIST delivered it (kept trimmed to what reconcile reads)."""
        kept = child.trimmed(body)
        self._observed_by_kind.setdefault(child.name, {}).setdefault(key, {})[kept["metadata"].get("uid", "")] = kept

    def gone(self, child: ChildKind, key: str, body: Mapping[str, Any]) -> None:
        by_uid = self._observed_by_kind.get(child.name, {}).get(key)
        if by_uid is not None:
            by_uid.pop((body.get("metadata") or {}).get("uid", ""), None)
            if not by_uid:
                del self._observed_by_kind[child.name][key]

    def forget(self, key: str) -> None:
        for by_key in self._observed_by_kind.values():
            by_key.pop(key, None)

    def _observed(self, child: ChildKind, key: str) -> list[JSON]:
        return list(self._observed_by_kind.get(child.name, {}).get(key, {}).values())

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


async def prime(
    children: Children,
    client: KubeClient,
    namespaces: Collection[str | None],
    selectors: Mapping[ChildKind, str],
    watched: Collection[ChildKind] = CHILDREN,
) -> int:
    """Fill the children from one LIST per kind and namespace (None: every namespace), before any run is reconciled:
    the watches only tell what changes after they start."""
    found = 0
    for child in watched:
        for namespace in namespaces:
            for body in await client.list(child.kind, namespace, label_selector=selectors.get(child, child.selector)):
                key = child.run_of(body)
                if key is not None:
                    children.observe(child, key, body)
                    found += 1
    return found
