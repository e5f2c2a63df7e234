"""The ``RewardCycle`` resource: N bursts of RL, each but the last followed by an Evaluation of its rollouts and a
reward model trained on the judges' preferences, which rewards the next burst.

The cycle is a template: the operator stamps its stages out as ordinary TrainingRuns and Evaluations, owned by the
cycle and chained by ``model.fromRun`` and ``data.fromEvaluation`` (and ``rollouts.fromRun``) alone, so that every
stage is visible, waits and fails on its own, and can be read with ``kubectl get trainingruns,evaluations``. Iteration
k of ``<cycle>`` is

- ``<cycle>-<k>-rl``: a TrainingRun from ``spec.rl``; from iteration 2 on it starts from the previous burst's final
  checkpoint (``model.fromRun``) and is rewarded by the previous reward model too (a ``rewardModel`` component);
- ``<cycle>-<k>-eval``: an Evaluation from ``spec.evaluation``, judging that burst's kept rollouts
  (``rollouts.fromRun``), writing under ``<spec.evaluation.output.uri>/<its name>``;
- ``<cycle>-<k>-rm``: a TrainingRun from ``spec.rewardModel`` trained on the Evaluation's pairs
  (``data.fromEvaluation``).

The last iteration is its RL burst alone: the cycle ends with a policy. The stamping (pure) is
``loka_operator.builders.cycle``; this module holds the models, the stage names and the CRD's rules.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from loka_api.contract import MAX_RUN_NAME_LENGTH, ROLLOUT_STEPS_LATEST
from loka_api.evaluation import STEPS_PATTERN, EvaluationPhase, EvaluationSettings
from loka_api.models import (
    DEFAULT_AGENT_RUBRIC,
    GROUP,
    VERSION,
    LokaModel,
    ObjectMeta,
    RewardModelSettings,
    RunPhase,
    TrainingRunSpec,
    cel,
)
from loka_api.phases import Health

REWARD_CYCLE_KIND = "RewardCycle"
REWARD_CYCLE_PLURAL = "rewardcycles"
REWARD_CYCLE_SINGULAR = "rewardcycle"
REWARD_CYCLE_SHORT_NAMES = ("rcycle", "lcycle")

MAX_ITERATIONS = 99
# `<cycle>-99-rm` must still be a run name (an Evaluation's name, `-99-eval`, may be longer than a run's).
MAX_CYCLE_NAME_LENGTH = MAX_RUN_NAME_LENGTH - len(f"-{MAX_ITERATIONS}-rm")


class Stage(enum.StrEnum):
    """The stages of one iteration, in the order they run."""

    RL = "rl"
    EVALUATION = "evaluation"
    REWARD_MODEL = "rewardModel"


_SUFFIX = {Stage.RL: "rl", Stage.EVALUATION: "eval", Stage.REWARD_MODEL: "rm"}


def stage_name(cycle: str, iteration: int, stage: Stage) -> str:
    """The TrainingRun or Evaluation of one stage: ``<cycle>-<iteration>-rl|eval|rm``."""
    return f"{cycle}-{iteration}-{_SUFFIX[stage]}"


def stages_of(iteration: int, iterations: int) -> tuple[Stage, ...]:
    """The stages iteration ``iteration`` of ``iterations`` has: RL, evaluation, reward model; the last its RL alone."""
    return (Stage.RL,) if iteration >= iterations else (Stage.RL, Stage.EVALUATION, Stage.REWARD_MODEL)


# ---------------------------------------------------------------------------------------------- spec


class CycleRollouts(LokaModel):
    steps: str = Field(
        default=ROLLOUT_STEPS_LATEST,
        max_length=640,
        pattern=STEPS_PATTERN,
        description="Which of the burst's kept steps to judge: latest, all, or step numbers (3,6,9).",
    )


class CycleEvaluationSpec(EvaluationSettings):
    """An Evaluation's spec less the run it reads: the cycle names each burst (rollouts.fromRun)."""

    rollouts: CycleRollouts = Field(default_factory=CycleRollouts)


class CycleReward(LokaModel):
    """How a burst after the first is rewarded by the previous iteration's reward model: a ``rewardModel`` component
    named ``name``, beside the burst's own reward (``combine: add``) or instead of it (``replace``)."""

    name: str = Field(
        default="rm",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The component's name (its metrics are reward/<name>/...).",
    )
    weight: float = Field(default=1.0, ge=-1000, le=1000, description="Its weight in the sum that is the reward.")
    combine: Literal["add", "replace"] = Field(
        default="add",
        description="add: beside spec.rl's own reward (its function or components); replace: the reward model alone.",
    )
    reward_model: RewardModelSettings = Field(
        description=(
            "The component's settings, without fromRun: the cycle sets rewardModel.fromRun to the reward model the "
            "burst follows, which the operator serves for the burst (serving: how). Or an endpoint of your own that "
            "serves it (the cycle creates each later burst only once the reward model it follows succeeded)."
        ),
    )


# The component a burst's own reward function becomes beside the reward model's (rl.reward.function), and the default
# rubric of an agent's environment: names the reward model's component may not take.
FUNCTION_COMPONENT = "task"
IMPLICIT_COMPONENTS = (FUNCTION_COMPONENT, *(name for name, _, _ in DEFAULT_AGENT_RUBRIC))


def _algorithms(*, rollouts: bool | None = None, preferences: bool | None = None) -> list[str]:
    from loka_api.recipes import recipes  # late: the recipes read the models
    from loka_api.recipes.base import DataFormat

    return [
        algorithm
        for recipe in recipes()
        if (rollouts is None or recipe.rollouts == rollouts)
        and (preferences is None or (recipe.data_format is DataFormat.PREFERENCES) == preferences)
        for algorithm in recipe.algorithms
    ]


def _cel_in(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def cycle_rules() -> list[dict[str, str]]:
    """The rules over a cycle's spec that no stage's own CRD can say (``self`` is the cycle's spec)."""
    rl, rm = _algorithms(rollouts=True), _algorithms(preferences=True)
    rl_storage = "(has(self.rl.storage) && has(self.rl.storage.endpoint) ? self.rl.storage.endpoint : '')"
    eval_storage = (
        "(has(self.evaluation.storage) && has(self.evaluation.storage.endpoint) ? self.evaluation.storage.endpoint "
        ": '')"
    )
    return [
        cel(
            f"self.rl.algorithm in {_cel_in(rl)}",
            f"rl.algorithm must be an RL algorithm that keeps rollouts ({', '.join(rl)})",
            field_path=".rl.algorithm",
        ),
        cel(
            "has(self.rl.rollouts) && has(self.rl.checkpoints)",
            "rl.rollouts and rl.checkpoints must be set: each burst's Evaluation judges its kept rollouts, and the "
            "next burst starts from its final checkpoint (e.g. rollouts: {every: 1})",
            field_path=".rl.rollouts",
        ),
        cel(
            f"self.rewardModel.algorithm in {_cel_in(rm)}",
            f"rewardModel.algorithm must train a reward model on preference pairs ({', '.join(rm)})",
            field_path=".rewardModel.algorithm",
        ),
        cel(
            "!has(self.rewardModel.data.train) && !has(self.rewardModel.data.fromEvaluation)",
            "rewardModel.data.train and rewardModel.data.fromEvaluation are the cycle's to set: each reward model "
            "trains on its iteration's Evaluation (leave both out)",
            field_path=".rewardModel.data",
        ),
        cel(
            "has(self.rewardModel.checkpoints)",
            "rewardModel.checkpoints must be set: the next burst is rewarded by the reward model's final checkpoint",
            field_path=".rewardModel.checkpoints",
        ),
        cel(
            f"{rl_storage} == {eval_storage}",
            "evaluation.storage.endpoint must be rl.storage.endpoint: the Evaluation reads the bursts' rollouts there",
            field_path=".evaluation.storage",
        ),
        cel(
            "!has(self.reward.rewardModel.fromRun)",
            "reward.rewardModel.fromRun is the cycle's to set: each later burst is rewarded by the reward model of the "
            "iteration before (leave it out, or give reward.rewardModel.endpoint to ask a server of your own)",
            field_path=".reward.rewardModel.fromRun",
        ),
        cel(
            "!has(self.reward.rewardModel.endpoint) || !has(self.reward.rewardModel.serving)",
            "reward.rewardModel.serving is how the operator serves the reward model; with an endpoint you serve it",
            field_path=".reward.rewardModel.serving",
        ),
        cel(
            "self.reward.combine == 'replace' || (has(self.rl.reward) && has(self.rl.reward.components) ? "
            "!self.rl.reward.components.exists(c, c.name == self.reward.name) : "
            f"!(self.reward.name in {_cel_in(list(IMPLICIT_COMPONENTS))}))",
            "reward.name must differ from the names of rl's reward components (rl.reward.components[].name; "
            f"{', '.join(IMPLICIT_COMPONENTS)} when rl gives a function or an environment's default rubric): the "
            "reward model's component is added beside them",
            field_path=".reward.name",
        ),
    ]


class RewardCycleSpec(LokaModel):
    iterations: int = Field(
        default=2,
        ge=1,
        le=MAX_ITERATIONS,
        description=(
            "RL bursts. Each but the last is followed by an Evaluation of its rollouts and a reward model trained on "
            "the judges' preferences, which rewards the next burst. May be raised while the cycle runs."
        ),
    )
    rl: TrainingRunSpec = Field(
        description=(
            "Each burst's TrainingRun spec. The first starts from rl.model; each later one from the previous "
            "burst's final checkpoint (model.fromRun), rewarded by the previous reward model too (see reward)."
        ),
    )
    evaluation: CycleEvaluationSpec = Field(
        description=(
            "Each burst's Evaluation spec, less rollouts.fromRun (the burst). It writes under <output.uri>/<its name>."
        )
    )
    reward_model: TrainingRunSpec = Field(
        description="Each reward model's TrainingRun spec, less data.fromEvaluation (its iteration's Evaluation)."
    )
    reward: CycleReward = Field(description="How the bursts after the first are rewarded by the reward model.")


# -------------------------------------------------------------------------------------------- status


class CyclePhase(enum.StrEnum):
    PENDING = "Pending"  # its first stages are not created yet, or a name it needs is taken
    RUNNING = "Running"  # a stage has not ended
    SUCCEEDED = "Succeeded"  # the last burst succeeded
    FAILED = "Failed"  # a stage failed, or the API server refused one


class StageStatus(LokaModel):
    """One stage as the cycle last saw it."""

    stage: Stage
    kind: Literal["TrainingRun", "Evaluation"]
    name: str
    phase: str | None = Field(default=None, description="The stage's own phase (Pending until it writes one).")


class IterationStatus(LokaModel):
    iteration: int = Field(ge=1)
    stages: list[StageStatus] = Field(default_factory=list, max_length=3)


class RewardCycleStatus(LokaModel):
    phase: CyclePhase | None = None
    observed_generation: int | None = None
    iteration: int | None = Field(default=None, ge=1, description="The iteration in progress (the last, once ended).")
    stage: str | None = Field(default=None, description="The stage in progress: its TrainingRun or Evaluation.")
    stage_phase: str | None = Field(default=None, description="That stage's phase.")
    iterations: list[IterationStatus] = Field(
        default_factory=list, max_length=MAX_ITERATIONS, description="Every iteration's stages, created so far."
    )
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: str | None = None


class RewardCycle(LokaModel):
    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = REWARD_CYCLE_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RewardCycleSpec
    status: RewardCycleStatus = Field(default_factory=RewardCycleStatus)


# A TrainingRun's and an Evaluation's phases share these names.
STAGE_SUCCEEDED, STAGE_FAILED = RunPhase.SUCCEEDED.value, RunPhase.FAILED.value
assert (EvaluationPhase.SUCCEEDED.value, EvaluationPhase.FAILED.value) == (STAGE_SUCCEEDED, STAGE_FAILED)

# How ArgoCD shows a cycle in each phase (gitops/argocd/health/loka.dev/RewardCycle/health.lua, held to it by
# tests/deploy/test_argocd_health.py).
CYCLE_ARGOCD_HEALTH: dict[CyclePhase, Health] = {
    CyclePhase.PENDING: Health.PROGRESSING,
    CyclePhase.RUNNING: Health.PROGRESSING,
    CyclePhase.SUCCEEDED: Health.HEALTHY,
    CyclePhase.FAILED: Health.DEGRADED,
}

REWARD_CYCLE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
    {"name": "Of", "type": "integer", "jsonPath": ".spec.iterations"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Stage-Phase", "type": "string", "jsonPath": ".status.stagePhase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]
