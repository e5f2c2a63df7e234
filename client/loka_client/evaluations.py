"""Evaluations through the API server, as ``Client`` handles runs (``loka_client.resources``): typed (the core's
``Evaluation``), submitted by server-side apply after a check against the models, followed by a watch until they end.

    with Client(namespace="team-a") as client:
        ev = client.evaluations.submit(Path("eval.yaml"))
        done = client.evaluations.wait(ev.name)          # EvaluationFailedError if it failed
        print(done.status.samples_judged, done.status.preferences_uri)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from loka_api import kinds
from loka_api.evaluation import Evaluation, EvaluationPhase
from loka_client.errors import EvaluationFailedError, EvaluationNotFoundError
from loka_client.resources import JSON, CustomResources, ObjectView, checked

if TYPE_CHECKING:
    from loka_client.connection import Connection


class EvaluationView(ObjectView, Evaluation):
    """An Evaluation as the API server holds it: typed, and (``manifest``) the object itself."""

    KIND: ClassVar[kinds.Kind] = kinds.EVALUATION
    NOUN: ClassVar[str] = "Evaluation"
    FOLLOW: ClassVar[str] = "loka eval status {name} -w -n {namespace}"

    @property
    def phase(self) -> EvaluationPhase:
        """Its phase, ``Pending`` before the operator wrote one."""
        return self.status.phase or EvaluationPhase.PENDING


def checked_evaluation(evaluation: Mapping[str, Any], namespace: str | None, source: str) -> JSON:
    """The manifest to apply, checked against the models (``loka_client.resources.checked``)."""
    return checked(EvaluationView, evaluation, namespace, source)


class Evaluations(CustomResources[EvaluationView]):
    """The Evaluations of one cluster: ``Client.evaluations``. Deleting one deletes its Job; what it wrote to S3
    stays."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection, EvaluationView, EvaluationNotFoundError, EvaluationFailedError)
