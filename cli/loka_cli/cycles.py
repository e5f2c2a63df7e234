"""`loka cycle submit|list|status|wait|delete`: RewardCycles as the client library returns them, printed like runs
and Evaluations; one cycle shown stage by stage, each as its own status says it, with the field that links it to the
stage before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from loka_api.cycle import CyclePhase, RewardCycle, Stage, StageStatus, stage_name
from loka_cli import resources
from loka_cli.views import age, columns
from loka_client import CycleView, EvaluationView, Run
from loka_client.cycles import StageObject
from loka_client.describe import describe_line, evaluation_line


def table(cycles: Sequence[RewardCycle], *, all_namespaces: bool = False, now: datetime | None = None) -> str:
    """One line per cycle: the printer columns of `kubectl get rewardcycles`."""
    rows = [
        (
            cycle.metadata.namespace,
            [
                cycle.metadata.name,
                cycle.status.phase or CyclePhase.PENDING,
                "-" if cycle.status.iteration is None else str(cycle.status.iteration),
                str(cycle.spec.iterations),
                cycle.status.stage or "-",
                cycle.status.stage_phase or "-",
                age(cycle.metadata.creation_timestamp, now),
            ],
        )
        for cycle in cycles
    ]
    header = ["NAME", "PHASE", "ITERATION", "OF", "STAGE", "STAGE-PHASE", "AGE"]
    return columns(header, rows, all_namespaces=all_namespaces)


def line(cycle: RewardCycle) -> str:
    """One line that changes when the cycle moves to another stage or its stage to another phase."""
    status = cycle.status
    text = f"{status.phase or CyclePhase.PENDING}"
    if status.iteration is not None:
        text += f" iteration {status.iteration} of {cycle.spec.iterations}"
    if status.stage:
        text += f", {status.stage} {status.stage_phase or 'Pending'}"
    if status.phase in (CyclePhase.PENDING, CyclePhase.FAILED) and status.message:
        text += f": {status.message}"
    return text


def describe(cycle: RewardCycle, stages: Mapping[str, StageObject]) -> str:
    """One cycle: where it stands, then every iteration's stages (``stages``: each as it is now, by name) with their
    phases and figures, and the field that links each to the one before."""
    spec, status = cycle.spec, cycle.status
    lines = [f"{cycle.metadata.name}   {status.phase or CyclePhase.PENDING}   {spec.iterations} iterations"]
    if status.message:
        lines.append(f"  {status.message}")
    width = max([len(s.name) for row in status.iterations for s in row.stages] + [0])
    for row in status.iterations:
        lines.append(f"  iteration {row.iteration} of {spec.iterations}")
        for stage in row.stages:
            found = stages.get(stage.name)
            lines.append(f"    {stage.stage:<11}  {stage.kind:<11}  {stage.name:<{width}}  {_stage_line(stage, found)}")
            lines += [f"    {'':<11}  {'':<11}  {'':<{width}}  {link}" for link in links(found)]
    created = {row.iteration for row in status.iterations}
    for iteration in range(max(created, default=0) + 1, spec.iterations + 1):
        before = stage_name(cycle.metadata.name, iteration - 1, Stage.REWARD_MODEL)
        after = "once the cycle is created" if iteration == 1 else f"once {before} succeeded"
        if status.phase == CyclePhase.FAILED:
            after = "nor will it be: the cycle failed"
        lines.append(f"  iteration {iteration} of {spec.iterations}: not created yet ({after})")
    return "\n".join(lines)


def _stage_line(stage: StageStatus, found: StageObject) -> str:
    if isinstance(found, EvaluationView):
        return evaluation_line(found.status)
    if isinstance(found, Run):
        return describe_line(found.status).rstrip()
    return f"not there now (the cycle last saw it {stage.phase or 'Pending'})"


def links(found: StageObject) -> list[str]:
    """What a stage was made from, by its own fields: the burst an Evaluation judges, the Evaluation a reward model
    trains on, the burst and the reward model a later burst starts from and is rewarded by."""
    if isinstance(found, EvaluationView):
        return [f"<- rollouts.fromRun {found.spec.rollouts.from_run}"]
    if not isinstance(found, Run):
        return []
    spec, status = found.spec, found.status
    said = []
    if spec.data.from_evaluation:
        pairs = f": {status.train_data.uri}" if status.train_data and status.train_data.uri else ""
        said.append(f"<- data.fromEvaluation {spec.data.from_evaluation}{pairs}")
    if spec.model.from_run is not None:
        step = f": its step {status.source.step}" if status.source and status.source.step is not None else ""
        said.append(f"<- model.fromRun {spec.model.from_run.name} ({spec.model.from_run.checkpoint}){step}")
    components = (spec.reward.components or []) if spec.reward is not None else []
    said += [
        f"<- reward component {c.name!r}: rewardModel.fromRun {c.reward_model.from_run.name}"
        for c in components
        if c.reward_model is not None and c.reward_model.from_run is not None
    ]
    return said


PRINTER: resources.Printer[CycleView] = resources.Printer(
    objects=lambda client: client.cycles,
    command="loka cycle status",
    table=lambda found, all_namespaces: table(found, all_namespaces=all_namespaces),
    describe=lambda client, cycle: describe(cycle, client.cycles.stages(cycle)),
    line=line,
    ended=lambda client, cycle: describe(cycle, client.cycles.stages(cycle)),
    deleted="its TrainingRuns and Evaluations go with it; what they wrote to S3 stays",
)
