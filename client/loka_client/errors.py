"""What can go wrong, as exceptions that say what happened and what to do next.

Every error the client raises is a ``LokaError``: ``message`` names the run, field or object concerned, ``hint``
(when there is one) says what to try. The subclasses say which kind of failure it is, so a caller (the CLI maps
them to exit codes) decides what to do without reading the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from loka_client.cycles import CycleView
    from loka_client.evaluations import EvaluationView
    from loka_client.resources import ObjectView
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


class ObjectNotFoundError(NotFoundError):
    """No object of the kind ``KIND`` of that name in that namespace (or it was deleted while it was followed);
    ``HINT`` says how to list them there."""

    KIND: ClassVar[str]
    HINT: ClassVar[str]

    def __init__(self, name: str, namespace: str, *, message: str | None = None, hint: str | None = None) -> None:
        super().__init__(
            message or f"no {self.KIND} {name!r} in namespace {namespace!r}",
            hint=hint or self.HINT.format(namespace=namespace),
        )
        self.name = name
        self.namespace = namespace


class RunNotFoundError(ObjectNotFoundError):
    KIND = "TrainingRun"
    HINT = "list the runs there with `loka status -n {namespace}` (or every namespace with -A)"


class EvaluationNotFoundError(ObjectNotFoundError):
    KIND = "Evaluation"
    HINT = "list the evaluations there with `loka eval status -n {namespace}`"


class CycleNotFoundError(ObjectNotFoundError):
    KIND = "RewardCycle"
    HINT = "list the cycles there with `loka cycle list -n {namespace}`"


class CheckpointNotFoundError(NotFoundError):
    """The run has no (complete) checkpoint at that step, or keeps no checkpoints at all."""


class ClusterError(LokaError):
    """The API server cannot be reached, or refused the request (credentials, permissions, a server error)."""


class StorageError(LokaError):
    """S3 cannot be reached, or refused the request."""


class CheckpointMismatchError(LokaError):
    """A downloaded file does not match the checkpoint's manifest: nothing of the download is kept."""


class FailedError(LokaError):
    """What was waited for failed; ``seen`` is how it ended, ``why`` its status message."""

    def __init__(self, seen: ObjectView, why: str | None, *, hint: str) -> None:
        super().__init__(f"{seen.KIND.kind} {seen.namespace}/{seen.name} failed: {why or '(no message)'}", hint=hint)
        self.seen = seen


class RunFailedError(FailedError):
    """The run that was waited for failed; ``run`` is how it ended."""

    def __init__(self, run: Run) -> None:
        super().__init__(run, run.status.message, hint=f"see why: loka logs {run.name} -n {run.namespace}")
        self.run = run


class EvaluationFailedError(FailedError):
    """The Evaluation that was waited for failed; the message says why, as its status does."""

    def __init__(self, evaluation: EvaluationView) -> None:
        hint = f"see its conditions: loka eval status {evaluation.name} -n {evaluation.namespace}"
        super().__init__(evaluation, evaluation.status.message, hint=hint)
        self.name, self.namespace = evaluation.name, evaluation.namespace


class CycleFailedError(FailedError):
    """The RewardCycle that was waited for failed; the message names the stage that failed."""

    def __init__(self, cycle: CycleView) -> None:
        hint = f"see each stage: loka cycle status {cycle.name} -n {cycle.namespace}"
        super().__init__(cycle, cycle.status.message, hint=hint)


class WaitTimeoutError(LokaError, TimeoutError):
    """What was waited for did not happen in time; ``run`` is the object as it was last seen (it keeps going)."""

    def __init__(self, message: str, run: ObjectView | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run = run
