"""Loka's client library: what the `loka` command, the demo and a notebook use to work with runs.

It stands on the core (`loka_api`) only: typed runs are the core's models, the checkpoint layout is the core's
reader, and kinds are named through `loka_api.kinds`. It never imports the operator, the trainer or the CLI
(`make lint` enforces it); errors are exceptions, never exit codes or printed text.

    from loka_client import Client
    with Client(namespace="team-a") as client:
        run = client.submit(Path("run.yaml"))
        final = client.wait(run.name)          # RunFailedError if it failed
"""

from loka_client.client import Client
from loka_client.cycles import Cycles, CycleView
from loka_client.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClusterError,
    CycleFailedError,
    CycleNotFoundError,
    EvaluationFailedError,
    EvaluationNotFoundError,
    FailedError,
    InvalidInputError,
    InvalidRunError,
    LokaError,
    NotFoundError,
    ObjectNotFoundError,
    RunFailedError,
    RunNotFoundError,
    StorageError,
    WaitTimeoutError,
)
from loka_client.evaluations import Evaluations, EvaluationView
from loka_client.resources import CustomResources, ObjectView
from loka_client.runs import Run, RunChange, Runs

__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "Client",
    "ClusterError",
    "CustomResources",
    "CycleFailedError",
    "CycleNotFoundError",
    "CycleView",
    "Cycles",
    "EvaluationFailedError",
    "EvaluationNotFoundError",
    "EvaluationView",
    "Evaluations",
    "FailedError",
    "InvalidInputError",
    "InvalidRunError",
    "LokaError",
    "NotFoundError",
    "ObjectNotFoundError",
    "ObjectView",
    "Run",
    "RunChange",
    "RunFailedError",
    "RunNotFoundError",
    "Runs",
    "StorageError",
    "WaitTimeoutError",
]
