"""Evaluations through the API server, as ``Client`` handles runs: typed (the core's ``Evaluation``), submitted by
server-side apply after a check against the models, followed by a watch until they end.

    with Client(namespace="team-a") as client:
        ev = client.evaluations.submit(Path("eval.yaml"))
        done = client.evaluations.wait(ev.name)          # EvaluationFailedError if it failed
        print(done.status.samples_judged, done.status.preferences_uri)
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr, ValidationError

from loka_api import kinds
from loka_api.evaluation import Evaluation, EvaluationPhase
from loka_client.errors import (
    EvaluationFailedError,
    InvalidRunError,
    LokaError,
    NotFoundError,
    WaitTimeoutError,
)
from loka_client.runs import JSON, field_of, parse_manifest, problems

if TYPE_CHECKING:
    from loka_client.connection import Connection

EVALUATIONS = kinds.EVALUATION
FIELD_MANAGER = "loka"
WATCH_REQUEST_SECONDS = 60
POLL_SECONDS = 0.5
ENDED = frozenset({EvaluationPhase.SUCCEEDED, EvaluationPhase.FAILED})


class EvaluationNotFoundError(NotFoundError):
    """No Evaluation of that name in that namespace (or it was deleted while it was followed)."""

    def __init__(self, name: str, namespace: str) -> None:
        super().__init__(
            f"no Evaluation {name!r} in namespace {namespace!r}",
            hint=f"list the evaluations there with `loka eval status -n {namespace}`",
        )
        self.name, self.namespace = name, namespace


class EvaluationView(Evaluation):
    """An Evaluation as the API server holds it: typed, and (``manifest``) the object itself."""

    _body: JSON = PrivateAttr(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> EvaluationView:
        try:
            evaluation = cls.model_validate(body)
        except ValidationError as error:
            meta = body.get("metadata") or {}
            where = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
            raise InvalidRunError(
                f"Evaluation {where} does not match this client's models: {problems(error)}",
                hint="upgrade loka to the operator's version",
                field=field_of(error),
            ) from error
        evaluation._body = dict(body)
        return evaluation

    @property
    def manifest(self) -> JSON:
        return self._body or self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def phase(self) -> EvaluationPhase:
        """Its phase, ``Pending`` before the operator wrote one."""
        return self.status.phase or EvaluationPhase.PENDING

    @property
    def finished(self) -> bool:
        return self.phase in ENDED


def checked_evaluation(evaluation: Mapping[str, Any], namespace: str | None, source: str) -> JSON:
    """The manifest to apply, as given (the API server's defaults fill in the rest): checked against the models
    first (InvalidRunError names the field), in ``namespace`` unless it names its own (then the two must agree)."""
    manifest = dict(evaluation)
    meta = manifest["metadata"] = dict(manifest.get("metadata") or {})
    if manifest.get("kind") != EVALUATIONS.kind:
        raise InvalidRunError(
            f"{source}: kind is {manifest.get('kind')!r}, not {EVALUATIONS.kind!r}",
            field="kind",
            value=manifest.get("kind"),
        )
    if not meta.get("name"):
        raise InvalidRunError(f"{source}: metadata.name is missing", field="metadata.name")
    if namespace and meta.get("namespace") and meta["namespace"] != namespace:
        raise InvalidRunError(
            f"{source}: the Evaluation's namespace {meta['namespace']!r} does not match --namespace {namespace!r}",
            hint="drop one of them",
            field="metadata.namespace",
            value=meta["namespace"],
        )
    meta["namespace"] = meta.get("namespace") or namespace
    try:
        Evaluation.model_validate(manifest)
    except ValidationError as error:
        raise InvalidRunError(
            f"{source}: {problems(error)}",
            field=field_of(error),
            value=error.errors()[0].get("input") if error.errors() else None,
        ) from error
    return manifest


class Evaluations:
    """The Evaluations of one cluster: ``Client.evaluations``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.connection.namespace

    def _call(self, what: str, name: str, ns: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        return self.connection.call_on("Evaluation", what, name, ns, EvaluationNotFoundError, method, *args, **kwargs)

    def get(self, name: str, namespace: str | None = None) -> EvaluationView:
        ns = self._ns(namespace)
        custom = self.connection.custom
        body = self._call("reading", name, ns, custom.get_namespaced_custom_object, *self._where(ns), name)
        return EvaluationView.from_body(body)

    def list(self, namespace: str | None = None, *, all_namespaces: bool = False) -> builtins.list[EvaluationView]:
        """The Evaluations of the namespace (or every namespace), sorted by namespace and name."""
        custom = self.connection.custom
        if all_namespaces:
            answer = self.connection.call("listing Evaluations", custom.list_cluster_custom_object, *EVALUATIONS.gvr)
        else:
            ns = self._ns(namespace)
            answer = self.connection.call(
                f"listing Evaluations in {ns!r}", custom.list_namespaced_custom_object, *self._where(ns)
            )
        found = [EvaluationView.from_body(item) for item in answer.get("items", [])]
        return sorted(found, key=lambda e: (e.namespace, e.name))

    def submit(
        self, evaluation: Mapping[str, Any] | Path, namespace: str | None = None, *, dry_run: bool = False
    ) -> EvaluationView:
        """Create or update the Evaluation by server-side apply (field manager ``loka``), checked first against the
        models (InvalidRunError names the field; nothing is sent). ``evaluation``: a manifest or a YAML file."""
        source = "the evaluation"
        if isinstance(evaluation, Path):
            source = str(evaluation)
            try:
                text = evaluation.read_text()
            except OSError as error:
                raise InvalidRunError(f"{evaluation}: {error.strerror}") from error
            evaluation = parse_manifest(text, source, EVALUATIONS.kind)
        manifest = checked_evaluation(evaluation, namespace or self.connection.namespace_flag, source)
        meta = manifest["metadata"]
        meta["namespace"] = meta.get("namespace") or self.connection.namespace
        extra: JSON = {"dry_run": "All"} if dry_run else {}
        response = self._call(
            "applying",
            "",
            meta["namespace"],
            self.connection.custom.patch_namespaced_custom_object,
            *self._where(meta["namespace"]),
            meta["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
            **extra,
        )
        return EvaluationView.from_body(json.loads(response.data))

    def delete(self, name: str, namespace: str | None = None, *, wait: bool = True, timeout: float = 120) -> None:
        """Delete the Evaluation; its Job goes with it, what it wrote to S3 stays."""
        ns = self._ns(namespace)
        custom = self.connection.custom
        self._call(
            "deleting", name, ns, custom.delete_namespaced_custom_object, *self._where(ns), name,
            propagation_policy="Background",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while wait and time.monotonic() < deadline:
            try:
                self.get(name, ns)
            except EvaluationNotFoundError:
                return
            time.sleep(POLL_SECONDS)
        if wait:
            raise WaitTimeoutError(f"Evaluation {name} is still there after {timeout:.0f}s", None)

    def watch(
        self, name: str, namespace: str | None = None, *, timeout: float | None = None
    ) -> Iterator[EvaluationView]:
        """The Evaluation now, then each time it changes, until it ends or ``timeout`` seconds passed."""
        ns = self._ns(namespace)
        deadline = None if timeout is None else time.monotonic() + timeout
        current = self.get(name, ns)
        yield current
        while not current.finished and (deadline is None or time.monotonic() < deadline):
            left = WATCH_REQUEST_SECONDS if deadline is None else max(1, int(deadline - time.monotonic()))
            for change in self._changes(name, ns, current, min(left, WATCH_REQUEST_SECONDS)):
                current = change
                yield current
                if current.finished:
                    return

    def _changes(self, name: str, ns: str, last: EvaluationView, seconds: int) -> Iterator[EvaluationView]:
        """One watch request's changes; an expired resourceVersion (410) answers with a fresh read instead."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self.connection.custom.list_namespaced_custom_object,
                *self._where(ns),
                field_selector=f"metadata.name={name}",
                resource_version=last.manifest["metadata"]["resourceVersion"],
                timeout_seconds=seconds,
            ):
                if event["type"] == "DELETED":
                    raise EvaluationNotFoundError(name, ns)
                yield EvaluationView.from_body(event["object"])
        except ApiException as error:
            if error.status != 410:
                raise self.connection.explain(error, f"watching Evaluation {ns}/{name}") from error
            yield self.get(name, ns)
        except LokaError:
            raise
        except Exception as error:
            raise self.connection.explain(error, f"watching Evaluation {ns}/{name}") from error
        finally:
            stream.stop()  # type: ignore[no-untyped-call]

    def wait(self, name: str, namespace: str | None = None, *, timeout: float | None = None) -> EvaluationView:
        """Follow the Evaluation until it ends; returns it when it succeeded. EvaluationFailedError when it failed,
        WaitTimeoutError after ``timeout`` seconds (it keeps going)."""
        last: EvaluationView | None = None
        for last in self.watch(name, namespace, timeout=timeout):
            if last.finished:
                break
        if last is None or not last.finished:
            seen = "never seen" if last is None else last.phase
            raise WaitTimeoutError(
                f"Evaluation {name} did not end within {timeout or 0:.0f}s (last seen: {seen})",
                None,
                hint=f"it keeps going; follow it with `loka eval status {name} -w -n {self._ns(namespace)}`",
            )
        if last.phase == EvaluationPhase.FAILED:
            raise EvaluationFailedError(last.name, last.namespace, last.status.message)
        return last

    def _where(self, ns: str) -> tuple[str, str, str, str]:
        return EVALUATIONS.group, EVALUATIONS.version, ns, EVALUATIONS.plural
