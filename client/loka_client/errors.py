"""What can go wrong, as exceptions that say what happened and what to do next.

Every error the client raises is a ``LokaError``: ``message`` names the run, field or object concerned, ``hint``
(when there is one) says what to try. The subclasses say which kind of failure it is, so a caller (the CLI maps
them to exit codes) decides what to do without reading the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loka_client.runs import Run


class LokaError(Exception):
    """A failure the user can act on: ``message`` says what happened, ``hint`` what to do next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.message = message
        self.hint = hint


class InvalidInputError(LokaError, ValueError):
    """Bad input (a flag, a path, a step): the message names it and what would be accepted."""


class InvalidRunError(InvalidInputError):
    """A run refused before or by the API server: ``field`` and ``value`` say which, when one is to blame."""

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None, value: object = None):
        super().__init__(message, hint=hint)
        self.field = field
        self.value = value


class NotFoundError(LokaError, LookupError):
    """Something named is not there: a run, its Ray cluster, a checkpoint."""


class RunNotFoundError(NotFoundError):
    """No TrainingRun of that name in that namespace (or it was deleted while it was watched)."""

    def __init__(self, name: str, namespace: str, *, message: str | None = None, hint: str | None = None) -> None:
        super().__init__(
            message or f"no TrainingRun {name!r} in namespace {namespace!r}",
            hint=hint or f"list the runs there with `loka status -n {namespace}` (or every namespace with -A)",
        )
        self.name = name
        self.namespace = namespace


class CheckpointNotFoundError(NotFoundError):
    """The run has no (complete) checkpoint at that step, or keeps no checkpoints at all."""


class ClusterError(LokaError):
    """The API server cannot be reached, or refused the request (credentials, permissions, a server error)."""


class StorageError(LokaError):
    """S3 cannot be reached, or refused the request."""


class CheckpointMismatchError(LokaError):
    """A downloaded file does not match the checkpoint's manifest: nothing of the download is kept."""


class RunFailedError(LokaError):
    """The run that was waited for failed; ``run`` is how it ended."""

    def __init__(self, run: Run) -> None:
        meta = run.metadata
        super().__init__(
            f"TrainingRun {meta.namespace}/{meta.name} failed: {run.status.message or '(no message)'}",
            hint=f"see why: loka logs {meta.name} -n {meta.namespace}",
        )
        self.run = run


class EvaluationFailedError(LokaError):
    """The Evaluation that was waited for failed; ``message`` says why, as its status does."""

    def __init__(self, name: str, namespace: str, why: str | None) -> None:
        super().__init__(
            f"Evaluation {namespace}/{name} failed: {why or '(no message)'}",
            hint=f"see its conditions: loka eval status {name} -n {namespace}",
        )
        self.name, self.namespace = name, namespace


class WaitTimeoutError(LokaError, TimeoutError):
    """The run did not reach what was waited for in time; ``run`` is how it was last seen (it keeps running)."""

    def __init__(self, message: str, run: Run | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run = run
