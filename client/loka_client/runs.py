"""Runs as the client hands them out: the core's typed ``TrainingRun``, with the object the API server holds, and
the changes a watch sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import PrivateAttr, ValidationError

from loka_api import KIND, RunPhase, TrainingRun
from loka_api.phases import finished, phase_of
from loka_client.errors import InvalidRunError

JSON = dict[str, Any]


class Run(TrainingRun):
    """A TrainingRun as the API server holds it: typed (the core's models) and, as ``manifest``, the object itself
    (with the fields the models leave out, such as managedFields), for printing as kubectl would.
    """

    _body: JSON = PrivateAttr(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Run:
        """The run of an API server answer; a stored object the models refuse is named with its bad field."""
        try:
            run = cls.model_validate(body)
        except ValidationError as error:
            meta = body.get("metadata") or {}
            where = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
            raise InvalidRunError(
                f"TrainingRun {where} does not match this client's models: {problems(error)}",
                hint="upgrade loka to the operator's version",
                field=field_of(error),
            ) from error
        run._body = dict(body)
        return run

    @property
    def manifest(self) -> JSON:
        """The object as the API server answered it (``-o json``); the typed fields without one."""
        return self._body or self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def phase(self) -> RunPhase:
        """The run's phase, ``Pending`` before the operator wrote one."""
        return phase_of(self)

    @property
    def finished(self) -> bool:
        """Succeeded or Failed, for the spec it has now (``loka_api.phases.finished``)."""
        return finished(self)


@dataclass(frozen=True)
class RunChange:
    """One change ``Client.watch`` saw: the run now, the run before (None for the first), and what changed: the
    status fields by their wire names (``phase``, ``progress``, ``metrics``, ``checkpoint``...), plus ``spec``.
    """

    run: Run
    previous: Run | None = None
    changed: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def between(cls, previous: Run | None, run: Run) -> RunChange:
        now = _wire(run)
        before = _wire(previous) if previous is not None else {}
        keys = {k for k in now.keys() | before.keys() if now.get(k) != before.get(k)}
        return cls(run, previous, frozenset(keys))

    @property
    def phase_changed(self) -> bool:
        return "phase" in self.changed or self.previous is None


def _wire(run: Run) -> JSON:
    status: JSON = run.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["spec"] = run.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["phase"] = run.phase.value
    return status


# ------------------------------------------------------------------------------------ what is submitted


def problems(error: ValidationError) -> str:
    """pydantic's complaints, each as ``field: what is wrong (got value)``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(the run)'}: {e['msg']} (got {e.get('input')!r})"
        for e in error.errors()
    )


def field_of(error: ValidationError) -> str | None:
    first = error.errors()[0] if error.errors() else None
    return ".".join(str(p) for p in first["loc"]) if first else None


def parse_manifest(text: str, source: str, kind: str = KIND) -> JSON:
    """The one object of ``kind`` (a TrainingRun unless told) in a YAML text (``source`` names where it came from in
    errors); a file may hold objects of other kinds beside it."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise InvalidRunError(f"{source}: not valid YAML: {error}") from error
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    if len(runs) != 1:
        hint = "write one run per file (`loka init NAME`)" if kind == KIND else f"write one {kind} per file"
        raise InvalidRunError(f"{source}: expected one {kind}, found {len(runs)}", hint=hint)
    manifest: JSON = runs[0]
    return manifest


def checked_manifest(run: TrainingRun | Mapping[str, Any], namespace: str | None, source: str = "the run") -> JSON:
    """The manifest to apply: checked against the models (bad fields named with their values), in ``namespace``
    unless it names its own (and then the two must agree).
    """
    if isinstance(run, TrainingRun):
        manifest = _wire_manifest(run)
    else:
        manifest = dict(run)
        manifest["metadata"] = dict(manifest.get("metadata") or {})
    meta = manifest["metadata"]
    if not meta.get("name"):
        raise InvalidRunError(f"{source}: metadata.name is missing", field="metadata.name")
    if namespace and meta.get("namespace") and meta["namespace"] != namespace:
        raise InvalidRunError(
            f"{source}: the run's namespace {meta['namespace']!r} does not match --namespace {namespace!r}",
            hint="drop one of them",
            field="metadata.namespace",
            value=meta["namespace"],
        )
    meta["namespace"] = meta.get("namespace") or namespace
    try:
        TrainingRun.model_validate(manifest)
    except ValidationError as error:
        raise InvalidRunError(
            f"{source}: {problems(error)}",
            hint="fix the field and submit again (`loka init` writes a valid run)",
            field=field_of(error),
            value=error.errors()[0].get("input") if error.errors() else None,
        ) from error
    return manifest


def _wire_manifest(run: TrainingRun) -> JSON:
    """What a typed run applies: the fields that were set (the API server's defaults fill in the rest)."""
    manifest: JSON = run.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"status"})
    manifest["apiVersion"], manifest["kind"] = run.api_version, run.kind
    manifest["metadata"] = {
        k: v
        for k, v in run.metadata.model_dump(mode="json", by_alias=True, exclude_unset=True).items()
        if k in ("name", "namespace", "labels", "annotations")
    }
    return manifest
