"""The ``Evaluation`` resource: LLM judges over a run's kept rollouts, writing scores and preferences to S3.

An Evaluation is a Job, not a Ray cluster: one CPU pod (admitted by Kueue like a run) runs ``loka-trainer evaluate``,
which reads the source run's rollouts (``status.rollouts.uri`` of ``spec.rollouts.fromRun``), asks every judge,
aggregates, and writes ``scores.jsonl``, ``preferences.jsonl`` and ``summary.json`` under ``spec.output.uri``. A
reward model trains on the preferences (``algorithm: rm``, ``data.train`` the preferences URI in
``status.preferencesURI``). Judges are the same settings a run's judge reward component takes (:class:`JudgeSpec`).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from loka_api.contract import MAX_RUN_NAME_LENGTH, ROLLOUT_STEPS_ALL, ROLLOUT_STEPS_LATEST
from loka_api.models import (
    DNS_LABEL_PATTERN,
    GROUP,
    VERSION,
    Condition,
    JudgeSettings,
    LokaModel,
    ObjectMeta,
    PodResources,
    QueueSpec,
    StorageSpec,
    cel,
    validations,
)

EVALUATION_KIND = "Evaluation"
EVALUATION_PLURAL = "evaluations"
EVALUATION_SINGULAR = "evaluation"
EVALUATION_SHORT_NAMES = ("ev", "leval")

_S3_URI_RULE = "self.matches('^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$')"
STEPS_PATTERN = rf"^({ROLLOUT_STEPS_LATEST}|{ROLLOUT_STEPS_ALL}|[1-9][0-9]{{0,8}}(,[1-9][0-9]{{0,8}}){{0,63}})$"


class JudgeSpec(JudgeSettings):
    """An LLM judge of an Evaluation: a run's judge reward component's settings, and the name it is reported by."""

    name: str = Field(
        default="judge",
        min_length=1,
        max_length=40,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="How the judge is reported (lowercase letters, digits, _).",
    )


class RolloutsSource(LokaModel):
    from_run: str = Field(
        min_length=1,
        max_length=MAX_RUN_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="A TrainingRun in this namespace that keeps its rollouts (spec.rollouts).",
    )
    steps: str = Field(
        default=ROLLOUT_STEPS_LATEST,
        max_length=640,
        pattern=STEPS_PATTERN,
        description="latest (its newest kept step), all, or step numbers separated by commas (3,6,9).",
    )


class PreferencesSpec(LokaModel):
    min_margin: float = Field(default=0.1, ge=0, le=1, description="Aggregated scores at least this far apart.")
    max_pairs_per_prompt: int = Field(default=4, ge=1, le=64)


class EvaluationOutput(LokaModel):
    uri: str = Field(
        max_length=1024,
        description="s3:// prefix; scores.jsonl, preferences.jsonl and summary.json go here.",
        json_schema_extra=validations(cel(_S3_URI_RULE, "must be an s3://<bucket>/<prefix> URI")),
    )


class EvaluationSettings(LokaModel):
    """Everything an Evaluation is told but which run's rollouts it reads: what a RewardCycle's evaluation template
    gives (loka_api.cycle), the cycle naming the run."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.judges.all(j, self.judges.exists_one(k, k.name == j.name))",
                "judges: each name must be unique",
                field_path=".judges",
            )
        )
    )

    image: str = Field(min_length=1, max_length=512, description="Trainer image (runs `loka-trainer evaluate`).")
    judges: list[JudgeSpec] = Field(min_length=1, max_length=8)
    aggregate: Literal["mean", "median", "majority"] = Field(
        default="mean", description="How several judges' scores of one response combine."
    )
    preferences: PreferencesSpec = Field(default=PreferencesSpec())
    output: EvaluationOutput
    storage: StorageSpec | None = None
    queue: QueueSpec | None = None
    resources: PodResources = Field(default=PodResources(cpu="1", memory="2Gi"), description="The evaluator pod.")


class EvaluationSpec(EvaluationSettings):
    rollouts: RolloutsSource


class EvaluationPhase(enum.StrEnum):
    PENDING = "Pending"  # waiting for the source run's rollouts
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class JudgeStatus(LokaModel):
    name: str
    judged: int = Field(default=0, ge=0)
    parse_rate: float | None = None
    error_rate: float | None = None
    tokens: int = Field(default=0, ge=0)


class EvaluationStatus(LokaModel):
    phase: EvaluationPhase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    job: str | None = None
    rollouts_uri: str | None = Field(default=None, alias="rolloutsURI", description="The source run's rollouts.")
    steps: list[int] = Field(default_factory=list, max_length=1024, description="The steps judged.")
    samples: int | None = Field(default=None, ge=0, description="Trajectories read.")
    samples_judged: int | None = Field(default=None, ge=0, description="Trajectories at least one judge scored.")
    preferences: int | None = Field(default=None, ge=0, description="Preference pairs written.")
    agreement: float | None = Field(default=None, description="Share of trajectories two judges agree on.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens the judges spent (as their usage says).")
    judges: list[JudgeStatus] = Field(default_factory=list, max_length=8)
    scores_uri: str | None = Field(default=None, alias="scoresURI")
    preferences_uri: str | None = Field(default=None, alias="preferencesURI")
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: str | None = None


class Evaluation(LokaModel):
    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = EVALUATION_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EvaluationSpec
    status: EvaluationStatus = Field(default_factory=EvaluationStatus)


def parse_steps(steps: str) -> str | list[int]:
    """``latest``, ``all``, or the step numbers of ``3,6,9``."""
    if steps in {ROLLOUT_STEPS_LATEST, ROLLOUT_STEPS_ALL}:
        return steps
    return sorted({int(part) for part in steps.split(",")})


EVALUATION_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Run", "type": "string", "jsonPath": ".spec.rollouts.fromRun"},
    {"name": "Samples", "type": "integer", "jsonPath": ".status.samplesJudged"},
    {"name": "Agreement", "type": "number", "jsonPath": ".status.agreement"},
    {"name": "Pairs", "type": "integer", "jsonPath": ".status.preferences"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens", "priority": 1},
    {"name": "Output", "type": "string", "jsonPath": ".spec.output.uri", "priority": 1},
]
