"""RewardCycles through the API server (``Client.cycles``, ``loka_client.resources``): typed (the core's
``RewardCycle``), submitted by server-side apply after a check against the models, followed until they end. Their
stages are ordinary runs and Evaluations: ``stages`` reads them by the names ``status.iterations`` lists.

    with Client(namespace="team-a") as client:
        cycle = client.cycles.submit(Path("reward-cycle.yaml"))
        done = client.cycles.wait(cycle.name)             # CycleFailedError if a stage failed
        print(done.status.iterations)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from loka_api import kinds
from loka_api.cycle import CyclePhase, RewardCycle, Stage
from loka_client.errors import CycleFailedError, CycleNotFoundError, NotFoundError
from loka_client.evaluations import Evaluations, EvaluationView
from loka_client.resources import CustomResources, ObjectView
from loka_client.runs import Run, Runs

if TYPE_CHECKING:
    from loka_client.connection import Connection


class CycleView(ObjectView, RewardCycle):
    """A RewardCycle as the API server holds it: typed, and (``manifest``) the object itself."""

    KIND: ClassVar[kinds.Kind] = kinds.REWARD_CYCLE
    NOUN: ClassVar[str] = "RewardCycle"
    FOLLOW: ClassVar[str] = "loka cycle status {name} -w -n {namespace}"

    @property
    def phase(self) -> CyclePhase:
        """Its phase, ``Pending`` before the operator wrote one."""
        return self.status.phase or CyclePhase.PENDING


# A stage as it is now: its TrainingRun or Evaluation, None while it is not there (not created yet, or deleted).
StageObject = Run | EvaluationView | None


class Cycles(CustomResources[CycleView]):
    """The RewardCycles of one cluster: ``Client.cycles``. Deleting one deletes its stages (foreground: they are gone
    when it is), and theirs with them; what they wrote to S3 stays."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection, CycleView, CycleNotFoundError, CycleFailedError, propagation="Foreground")

    def stages(self, cycle: RewardCycle) -> dict[str, StageObject]:
        """Each stage ``status.iterations`` lists, by name, as it is now (its own status, and in its spec the field that
        links it to the stage before)."""
        runs, evaluations = Runs(self.connection), Evaluations(self.connection)
        found: dict[str, StageObject] = {}
        for row in cycle.status.iterations:
            for stage in row.stages:
                reader = evaluations if stage.stage is Stage.EVALUATION else runs
                try:
                    found[stage.name] = reader.get(stage.name, cycle.metadata.namespace)
                except NotFoundError:
                    found[stage.name] = None
        return found
