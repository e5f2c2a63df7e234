"""Loka's three kinds (TrainingRun, Evaluation, RewardCycle) through the API server, one way for all of them: a stored
object typed by the core's model (``ObjectView``), a manifest checked before it is sent (``parse_manifest``,
``checked``), and a kind's objects (``CustomResources``): read, listed, applied server-side, patched, deleted, watched
and waited for.

``Client`` (runs), ``Client.evaluations`` and ``Client.cycles`` are this class for their kind.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import yaml
from pydantic import PrivateAttr, ValidationError

from loka_api.models import KIND, LokaModel
from loka_client.errors import (
    FailedError,
    InvalidRunError,
    LokaError,
    NotFoundError,
    ObjectNotFoundError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from loka_api.kinds import Kind
    from loka_api.models import ObjectMeta
    from loka_client.connection import Connection

JSON = dict[str, Any]
# Server-side apply's field manager: what `kubectl get --show-managed-fields` names as the object's author.
FIELD_MANAGER = "loka"
# One watch request lasts at most this long before it is made again (the API server ends long ones anyway).
WATCH_REQUEST_SECONDS = 60
# How often delete(wait=True) looks again.
POLL_SECONDS = 0.5
# The phases every kind ends in (a run's, an Evaluation's and a cycle's share these names).
ENDED = frozenset({"Succeeded", "Failed"})


class ObjectView(LokaModel):
    """An object as the API server holds it: typed (mixed in before the core's model, ``class Run(ObjectView,
    TrainingRun)``) and, as ``manifest``, the object itself (with what the models leave out, such as managedFields),
    for printing as kubectl would."""

    KIND: ClassVar[Kind]
    NOUN: ClassVar[str]  # how a message names one: "run", "Evaluation", "RewardCycle"
    FOLLOW: ClassVar[str]  # the command that follows one, formatted with name and namespace
    SUBMIT_HINT: ClassVar[str | None] = None  # what to do about a manifest the models refuse

    _body: JSON = PrivateAttr(default_factory=dict)

    if TYPE_CHECKING:
        metadata: ObjectMeta

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """The object of an API server answer; a stored object the models refuse is named with its bad field."""
        try:
            view = cls.model_validate(body)
        except ValidationError as error:
            meta = body.get("metadata") or {}
            where = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
            raise InvalidRunError(
                f"{cls.KIND.kind} {where} does not match this client's models: {problems(error)}",
                hint="upgrade loka to the operator's version",
                field=field_of(error),
            ) from error
        view._body = dict(body)
        return view

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
    def phase(self) -> str:
        """Its phase, ``Pending`` before the operator wrote one."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """Succeeded or Failed, for good."""
        return self.phase in ENDED

    @classmethod
    def follow_command(cls, name: str, namespace: str) -> str:
        return cls.FOLLOW.format(name=name, namespace=namespace)


V = TypeVar("V", bound=ObjectView)


# ------------------------------------------------------------------------------------ what is submitted


def problems(error: ValidationError) -> str:
    """pydantic's complaints, each as ``field: what is wrong (got value)``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(the object)'}: {e['msg']} (got {e.get('input')!r})"
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
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    if len(found) != 1:
        hint = "write one run per file (`loka init NAME`)" if kind == KIND else f"write one {kind} per file"
        raise InvalidRunError(f"{source}: expected one {kind}, found {len(found)}", hint=hint)
    manifest: JSON = found[0]
    return manifest


def checked(view: type[ObjectView], given: Mapping[str, Any], namespace: str | None, source: str) -> JSON:
    """The manifest to apply, as given (the API server's defaults fill in the rest): of ``view``'s kind, named,
    checked against the models (InvalidRunError names the field and the value), in ``namespace`` unless it names its
    own (then the two must agree)."""
    manifest = dict(given)
    meta = manifest["metadata"] = dict(manifest.get("metadata") or {})
    kind = view.KIND.kind
    if manifest.get("kind") != kind:
        raise InvalidRunError(
            f"{source}: kind is {manifest.get('kind')!r}, not {kind!r}", field="kind", value=manifest.get("kind")
        )
    if not meta.get("name"):
        raise InvalidRunError(f"{source}: metadata.name is missing", field="metadata.name")
    if namespace and meta.get("namespace") and meta["namespace"] != namespace:
        raise InvalidRunError(
            f"{source}: the {view.NOUN}'s namespace {meta['namespace']!r} does not match --namespace {namespace!r}",
            hint="drop one of them",
            field="metadata.namespace",
            value=meta["namespace"],
        )
    meta["namespace"] = meta.get("namespace") or namespace
    try:
        view.model_validate(manifest)
    except ValidationError as error:
        raise InvalidRunError(
            f"{source}: {problems(error)}",
            hint=view.SUBMIT_HINT,
            field=field_of(error),
            value=error.errors()[0].get("input") if error.errors() else None,
        ) from error
    return manifest


# ------------------------------------------------------------------------------------ a kind's objects


class CustomResources(Generic[V]):
    """The objects of one of Loka's kinds in one cluster, typed as ``view``. ``not_found(name, namespace,
    message=...)`` is the error for a missing one, ``failed(view)`` for one that was waited for and failed;
    ``propagation`` is how a delete takes its children."""

    def __init__(
        self,
        connection: Connection,
        view: type[V],
        not_found: type[ObjectNotFoundError],
        failed: Callable[[V], FailedError],
        *,
        propagation: str = "Background",
    ) -> None:
        self.connection = connection
        self.view = view
        self.kind = view.KIND
        self.not_found = not_found
        self.failed = failed
        self.propagation = propagation

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.connection.namespace

    def _where(self, ns: str) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, ns, self.kind.plural

    def _call(self, what: str, name: str, ns: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        return self.connection.call_on(self.kind.kind, what, name, ns, self.not_found, method, *args, **kwargs)

    # ------------------------------------------------------------------------------ reading

    def get_body(self, name: str, namespace: str | None = None) -> JSON:
        """The object as the API server holds it; ``not_found`` when there is none of that name."""
        ns = self._ns(namespace)
        body: JSON = self._call(
            "reading", name, ns, self.connection.custom.get_namespaced_custom_object, *self._where(ns), name
        )
        return body

    def get(self, name: str, namespace: str | None = None) -> V:
        return self.view.from_body(self.get_body(name, namespace))

    def list(self, namespace: str | None = None, *, all_namespaces: bool = False) -> builtins.list[V]:
        """The objects of the namespace (or of every namespace), sorted by namespace and name."""
        custom, kind = self.connection.custom, self.kind
        if all_namespaces:
            answer = self.connection.call(f"listing {kind.kind}s", custom.list_cluster_custom_object, *kind.gvr)
        else:
            ns = self._ns(namespace)
            answer = self.connection.call(
                f"listing {kind.kind}s in {ns!r}", custom.list_namespaced_custom_object, *self._where(ns)
            )
        found = [self.view.from_body(item) for item in answer.get("items", [])]
        return sorted(found, key=lambda v: (v.namespace, v.name))

    # ------------------------------------------------------------------------------ writing

    def submit(
        self,
        given: Mapping[str, Any] | Path,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        force_conflicts: bool = False,
        source: str | None = None,
    ) -> V:
        """Create or update the object by server-side apply (field manager ``loka``), as ``kubectl apply
        --server-side`` would. ``given`` is a manifest or a YAML file holding one (beside objects of other kinds). It
        is checked against the models first: InvalidRunError names the field, the value and what is wrong; nothing
        is sent. ``dry_run``: the API server validates it (schema and CEL rules) and stores nothing. ``source``
        names where it came from in errors."""
        source = source or (str(given) if isinstance(given, Path) else f"the {self.view.NOUN}")
        if isinstance(given, Path):
            try:
                text = given.read_text()
            except OSError as error:
                raise InvalidRunError(f"{given}: {error.strerror}") from error
            given = parse_manifest(text, source, self.kind.kind)
        manifest = checked(self.view, given, namespace or self.connection.namespace_flag, source)
        manifest["metadata"]["namespace"] = manifest["metadata"].get("namespace") or self.connection.namespace
        return self.apply(manifest, dry_run=dry_run, force_conflicts=force_conflicts)

    def apply(self, manifest: JSON, *, dry_run: bool = False, force_conflicts: bool = False) -> V:
        """Server-side apply of a manifest already checked (``submit`` checks it)."""
        meta = manifest["metadata"]
        extra: JSON = {"dry_run": "All"} if dry_run else {}
        # Read the answer ourselves: the generated client maps only 200, and an apply that creates answers 201.
        response = self.connection.call(
            f"applying {self.kind.kind} {meta['namespace']}/{meta['name']}",
            self.connection.custom.patch_namespaced_custom_object,
            *self._where(meta["namespace"]),
            meta["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=force_conflicts,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
            **extra,
        )
        return self.view.from_body(json.loads(response.data))

    def patch(self, name: str, namespace: str | None, patch: JSON) -> V:
        """A JSON merge patch of the object (its spec; the operator writes status)."""
        ns = self._ns(namespace)
        body = self._call(
            "patching", name, ns, self.connection.custom.patch_namespaced_custom_object, *self._where(ns), name, patch,
            _content_type="application/merge-patch+json",
        )  # fmt: skip
        return self.view.from_body(body)

    def delete(self, name: str, namespace: str | None = None, *, wait: bool = True, timeout: float = 120) -> None:
        """Delete the object; its children go with it, what they wrote to S3 stays. With ``wait``, return once it is
        gone (WaitTimeoutError when a finalizer holds it longer than ``timeout`` seconds)."""
        ns = self._ns(namespace)
        self._call(
            "deleting", name, ns, self.connection.custom.delete_namespaced_custom_object, *self._where(ns), name,
            propagation_policy=self.propagation,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while wait and time.monotonic() < deadline:
            try:
                self.get_body(name, ns)
            except NotFoundError:
                return
            time.sleep(POLL_SECONDS)
        if wait:
            raise WaitTimeoutError(
                f"{self.kind.kind} {name} is still there after {timeout:.0f}s (a finalizer may hold it)", None
            )

    # ------------------------------------------------------------------------------ following

    def watch(
        self, name: str, namespace: str | None = None, *, timeout: float | None = None, until_finished: bool = True
    ) -> Iterator[V]:
        """The object now, then each time its spec or status changes, as the API server's watch delivers them
        (reconnecting as needed). Ends after the change that finished it (with ``until_finished``) or once
        ``timeout`` seconds passed; ``not_found`` if it is deleted meanwhile."""
        ns = self._ns(namespace)
        deadline = None if timeout is None else time.monotonic() + timeout
        body = self.get_body(name, ns)
        last = self.view.from_body(body)
        yield last
        if until_finished and last.finished:
            return
        version = body["metadata"]["resourceVersion"]
        while deadline is None or time.monotonic() < deadline:
            left = WATCH_REQUEST_SECONDS if deadline is None else max(1, int(deadline - time.monotonic()))
            for kind, event_body in self._events(name, ns, version, min(left, WATCH_REQUEST_SECONDS)):
                if kind == "DELETED":
                    raise self.not_found(name, ns, message=f"{self.kind.kind} {ns}/{name} was deleted")
                version = event_body["metadata"]["resourceVersion"]
                seen = self.view.from_body(event_body)
                if _observed(seen) == _observed(last):
                    continue  # only metadata moved (managed fields, annotations)
                last = seen
                yield seen
                if until_finished and seen.finished:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def _events(self, name: str, ns: str, version: str, seconds: int) -> Iterator[tuple[str, JSON]]:
        """One watch request's events; an expired resourceVersion (410) answers with a fresh read instead."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        what = f"watching {self.kind.kind} {ns}/{name}"
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self.connection.custom.list_namespaced_custom_object,
                *self._where(ns),
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=seconds,
            ):
                yield str(event["type"]), event["object"]
        except ApiException as error:
            if error.status != 410:
                raise self.connection.explain(error, what) from error
            yield "MODIFIED", self.get_body(name, ns)  # too old: start from a fresh read
        except LokaError:
            raise
        except Exception as error:
            raise self.connection.explain(error, what) from error
        finally:
            stream.stop()  # type: ignore[no-untyped-call]

    def wait(
        self, name: str, namespace: str | None = None, *, until: Iterable[str] = (), timeout: float | None = None
    ) -> V:
        """Follow the object until it succeeded (or reached a phase of ``until``); returns it then.

        Raises ``failed`` when it failed (unless Failed is in ``until``), WaitTimeoutError after ``timeout`` seconds
        (it keeps going), ``not_found`` when it is deleted meanwhile."""
        wanted = set(until)
        seen: V | None = None
        for seen in self.watch(name, namespace, timeout=timeout):
            if seen.phase in wanted and (seen.phase not in ENDED or seen.finished):
                return seen
            if seen.finished:
                if seen.phase == "Failed":
                    raise self.failed(seen)
                return seen
        target = " or ".join(sorted(wanted)) or "the end"
        raise WaitTimeoutError(
            f"{self.kind.kind} {name} did not reach {target} within {timeout or 0:.0f}s "
            f"(last seen: {'never seen' if seen is None else seen.phase})",
            seen,
            hint=f"it keeps going; follow it with `{self.view.follow_command(name, self._ns(namespace))}`",
        )


def _observed(view: ObjectView) -> JSON:
    """What a change is: the spec and the status (not metadata, which moves with every write)."""
    return view.model_dump(mode="json", include={"spec", "status"})
