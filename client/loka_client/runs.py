"""Runs as the client hands them out: the core's typed ``TrainingRun``, with the object the API server holds, and
the changes a watch sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from loka_api import RunPhase, TrainingRun, kinds
from loka_api.phases import finished, phase_of
from loka_client.errors import RunFailedError, RunNotFoundError
from loka_client.resources import JSON, CustomResources, ObjectView, checked

if TYPE_CHECKING:
    from loka_client.connection import Connection


class Run(ObjectView, TrainingRun):
    """A TrainingRun as the API server holds it: typed (the core's models) and, as ``manifest``, the object itself."""

    KIND: ClassVar[kinds.Kind] = kinds.TRAINING_RUN
    NOUN: ClassVar[str] = "run"
    FOLLOW: ClassVar[str] = "loka status {name} -w -n {namespace}"
    SUBMIT_HINT: ClassVar[str | None] = "fix the field and submit again (`loka init` writes a valid run)"

    @property
    def phase(self) -> RunPhase:
        """The run's phase, ``Pending`` before the operator wrote one."""
        return phase_of(self)

    @property
    def finished(self) -> bool:
        """Succeeded or Failed, for the spec it has now (``loka_api.phases.finished``)."""
        return finished(self)


class Runs(CustomResources[Run]):
    """The TrainingRuns of one cluster, as any of Loka's kinds (``Client``'s run methods stand on it)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection, Run, RunNotFoundError, RunFailedError)


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


def checked_manifest(run: TrainingRun | Mapping[str, Any], namespace: str | None, source: str = "the run") -> JSON:
    """The manifest to apply: checked against the models (bad fields named with their values), in ``namespace``
    unless it names its own (and then the two must agree).
    """
    return checked(Run, wire_manifest(run) if isinstance(run, TrainingRun) else run, namespace, source)


def wire_manifest(run: TrainingRun) -> JSON:
    """What a typed run applies: the fields that were set (the API server's defaults fill in the rest)."""
    manifest: JSON = run.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"status"})
    manifest["apiVersion"], manifest["kind"] = run.api_version, run.kind
    manifest["metadata"] = {
        k: v
        for k, v in run.metadata.model_dump(mode="json", by_alias=True, exclude_unset=True).items()
        if k in ("name", "namespace", "labels", "annotations")
    }
    return manifest
