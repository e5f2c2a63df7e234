"""The TrainingRun resource as pydantic v2 models: the single source of truth for the CRD.

Field constraints (bounds, enums, patterns) become the CRD's structural schema; cross-field
rules are CEL (`x-kubernetes-validations`) attached with `json_schema_extra`. Every string and
list is bounded so that the API server can cost-check the CEL rules.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from loka_api.contract import (
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    BUILTIN_SCHEME,
    CHECKPOINT_LAYOUT,
    DEFAULT_GRACE_PERIOD_SECONDS,
    FROM_RUN_FINAL,
    FROM_RUN_LATEST,
    MAX_RUN_NAME_LENGTH,
    MIN_GRACE_PERIOD_SECONDS,
    STEP_FOLDER_PREFIX,
)

# spec.deadline.seconds: a year at most (runs beyond that are not one run).
MAX_DEADLINE_SECONDS = 31_536_000
# CEL: the run's grace period, defaulted as the API server defaults it.
_GRACE_PERIOD_CEL = (
    "(has(self.preemption) && has(self.preemption.gracePeriodSeconds) ? self.preemption.gracePeriodSeconds : "
    f"{DEFAULT_GRACE_PERIOD_SECONDS})"
)

GROUP = "loka.dev"
VERSION = "v1alpha1"
KIND = "TrainingRun"
PLURAL = "trainingruns"
SINGULAR = "trainingrun"
SHORT_NAMES = ("tr", "trun")
CATEGORIES = ("loka",)

# The Kubernetes resource.Quantity grammar (as emitted by kubebuilder for resource.Quantity).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _quantity_to_str(value: object) -> object:
    # YAML turns `cpu: 8` into an int; the API server keeps it as int-or-string.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry. (No messageExpression: the API server estimates `string(int)` in one
    as unbounded and refuses the CRD's total cost.)"""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class LokaModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields ignored (the API server prunes)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --------------------------------------------------------------------------------------------- spec


def _known_algorithm(value: str) -> str:
    """spec.algorithm names a registered recipe (the CRD's enum is generated from the same registry)."""
    from loka_api.recipes import recipe_for  # late: the recipes read these models

    recipe_for(value)
    return value


# What the run trains: one of the algorithms of the registered recipes (loka_api.recipes).
AlgorithmName = Annotated[str, AfterValidator(_known_algorithm)]


class Engine(enum.StrEnum):
    VERL = "verl"
    TRL = "trl"


class RolloutEngine(enum.StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"


class SecretKeyRef(LokaModel):
    """A key in a Secret of the run's namespace. Only referenced (secretKeyRef), never copied."""

    secret: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret.")


def _builtin_alternatives(names: tuple[str, ...]) -> str:
    return "|".join(f"{BUILTIN_SCHEME}{name}".replace(".", "\\\\.") for name in names)


def _builtin_list(names: tuple[str, ...]) -> str:
    return ", ".join(f"{BUILTIN_SCHEME}{name}" for name in names)


FROM_RUN_CHECKPOINT_PATTERN = rf"^({FROM_RUN_FINAL}|{FROM_RUN_LATEST}|[1-9][0-9]{{0,8}})$"


class FromRun(LokaModel):
    """Another run's checkpoint as this run's starting weights (staged as Hugging Face weights)."""

    name: str = Field(
        min_length=1,
        max_length=MAX_RUN_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="A TrainingRun in this run's namespace.",
    )
    checkpoint: str = Field(
        default=FROM_RUN_FINAL,
        max_length=16,
        pattern=FROM_RUN_CHECKPOINT_PATTERN,
        description=(
            "final (wait until the run succeeded; its last checkpoint), latest (its newest checkpoint, once it has "
            "one), or a step number (once it saved that step)."
        ),
    )


class ModelSource(LokaModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.uri) != has(self.fromRun)",
                "set exactly one of model.uri (a model) and model.fromRun (another run's checkpoint)",
            )
        )
    )

    uri: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "hf://<org>/<model> (a Hugging Face model id), s3://<bucket>/<prefix> (a staged model), or a model the "
            f"trainer builds itself, randomly initialised (no download): {_builtin_list(BUILTIN_MODELS)}."
        ),
        json_schema_extra=validations(
            cel(
                f"self.matches('^(hf://[^/]+/[^/]+|s3://[^/]+/.+|{_builtin_alternatives(BUILTIN_MODELS)})$')",
                f"must be hf://<org>/<model>, s3://<bucket>/<prefix>, or one of {_builtin_list(BUILTIN_MODELS)}",
            )
        ),
    )
    from_run: FromRun | None = Field(
        default=None,
        description="Start from another run's checkpoint: the run waits (Pending) until that checkpoint exists.",
    )


_S3_URI_RULE = "self.matches('^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$')"
_DATA_URI_RULE = f"{_S3_URI_RULE} || self.matches('^({_builtin_alternatives(BUILTIN_DATASETS)})$')"
_DATA_URI_MESSAGE = f"must be an s3://<bucket>/<key> URI or one of {_builtin_list(BUILTIN_DATASETS)}"
_BUILTIN_DATA = f"or {_builtin_list(BUILTIN_DATASETS)} (toy tasks the trainer builds itself)"


class DataSpec(LokaModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.train) != has(self.fromEvaluation)",
                "set exactly one of data.train and data.fromEvaluation",
            )
        )
    )

    train: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            f"s3:// URI of the training parquet file, {_BUILTIN_DATA}. rm: preference pairs (an Evaluation's "
            "preferences.jsonl, or parquet with prompt, chosen and rejected)."
        ),
        json_schema_extra=validations(cel(_DATA_URI_RULE, _DATA_URI_MESSAGE)),
    )
    from_evaluation: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "rm: train on the preference pairs of this Evaluation (same namespace) instead of data.train: the run "
            "waits (Pending) until it succeeded, and status.trainData records its preferences.jsonl."
        ),
    )
    validation: str | None = Field(
        default=None,
        max_length=1024,
        description=f"s3:// URI of the validation parquet file, {_BUILTIN_DATA}: its held-out split.",
        json_schema_extra=validations(cel(_DATA_URI_RULE, _DATA_URI_MESSAGE)),
    )
    prompt_key: str = Field(default="prompt", min_length=1, max_length=128, description="Column holding the prompt.")
    response_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="sft: column holding the demonstrated response to promptKey's prompt.",
    )
    messages_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="sft: column holding whole conversations (lists of {role, content}), instead of responseKey.",
    )
    max_prompt_length: int = Field(default=512, ge=1, le=131072, description="Prompt tokens kept (verl truncation).")
    max_response_length: int = Field(default=1024, ge=1, le=131072, description="Tokens generated per response.")
    max_length: int | None = Field(
        default=None,
        ge=2,
        le=262144,
        description="sft: tokens per training sequence (default maxPromptLength + maxResponseLength).",
    )


_FUNCTION_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*(\\\\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_FUNCTION_RULE = cel(
    f"self.matches('{_FUNCTION_PATTERN}')",
    "must be module.path:function (e.g. loka_trainer.rewards.gsm8k:compute_score)",
)


class ConfigMapKeyRef(LokaModel):
    """A key in a ConfigMap of the resource's namespace (a rubric, a system prompt), read where it is used."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="ConfigMap name.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the ConfigMap.")


class RubricSource(LokaModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.text) != has(self.configMap)", "set exactly one of rubric.text and rubric.configMap")
        )
    )

    text: str | None = Field(default=None, max_length=16384, description="The rubric itself (the judge's system turn).")
    config_map: ConfigMapKeyRef | None = Field(default=None, description="A ConfigMap key holding the rubric.")


_HTTP_URL_RULE = cel("self.matches('^https?://[^/\\\\s]+(/.*)?$')", "must be an http:// or https:// URL")


class JudgeSettings(LokaModel):
    """An LLM judge behind an OpenAI-compatible chat endpoint (vLLM, a gateway, a hosted API): the same settings in
    a run's judge reward component and in an Evaluation's judges. A judge that is slow or down slows or zeroes its
    component within ``timeoutSeconds``; it never stalls the run.
    """

    endpoint: str = Field(
        max_length=512,
        description="OpenAI base URL, e.g. http://vllm-judge.models:8000/v1.",
        json_schema_extra=validations(_HTTP_URL_RULE),
    )
    model: str = Field(min_length=1, max_length=256, description="The model name the endpoint serves.")
    rubric: RubricSource | None = Field(
        default=None, description="What the judge is told to judge (a default if unset)."
    )
    api_key: SecretKeyRef | None = Field(
        default=None, description="A Secret key holding the endpoint's API key; it reaches only the pods that call it."
    )
    samples: int = Field(default=1, ge=1, le=16, description="Verdicts averaged per response.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_concurrency: int = Field(default=8, ge=1, le=1024, description="Requests in flight per process.")
    timeout_seconds: float = Field(default=60, gt=0, le=3600, description="Per verdict, retries included.")
    retries: int = Field(default=3, ge=0, le=10, description="Retries on 429 and 5xx (never on other 4xx).")
    failure_score: float = Field(default=0.0, ge=0, le=1, description="What a verdict that failed scores.")


class RewardModelServing(LokaModel):
    """How the operator serves a reward model given by ``fromRun``: a Deployment and a Service owned by the run,
    reachable only from the run's pods and counted by Kueue with the run. On CPU (``gpus: 0``) the plain server
    ``python -m loka_trainer.rm_server`` (tiny models); with GPUs, vLLM's pooling runner (``vllm serve <checkpoint>
    --runner pooling``). An init container of the run's image stages the checkpoint first.
    """

    gpus: int = Field(default=0, ge=0, le=8, description="nvidia.com/gpu per server pod (0: the CPU server).")
    cpu: Quantity = Field(default="2", description="CPU request and limit of each server pod.")
    memory: Quantity = Field(default="8Gi", description="Memory request and limit of each server pod.")
    replicas: int = Field(default=1, ge=1, le=16, description="Server pods behind the Service.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description=(
            "The serving container's image (default: the run's image, which carries the CPU server and vLLM). "
            "With gpus, an image whose `vllm` command serves pooling models, e.g. vllm/vllm-openai."
        ),
    )


class RewardModelSettings(LokaModel):
    """A reward model (an ``algorithm: rm`` run's checkpoint behind vLLM's pooling API, ``/classify``): served
    elsewhere (``endpoint``), or served for the run by the operator from another run's checkpoint (``fromRun``).
    Its value is sigmoid(logit) in [0, 1].
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.endpoint) != has(self.fromRun)",
                "set exactly one of rewardModel.endpoint (a served model) and rewardModel.fromRun (an rm run's "
                "checkpoint, which the operator serves for the run)",
            ),
            cel(
                "!has(self.serving) || has(self.fromRun)",
                "rewardModel.serving is how the operator serves rewardModel.fromRun; a given endpoint is served "
                "elsewhere",
                field_path=".serving",
            ),
            cel(
                "!has(self.apiKey) || has(self.endpoint)",
                "rewardModel.apiKey is for a given endpoint; the server the operator runs for fromRun takes none",
                field_path=".apiKey",
            ),
        )
    )

    endpoint: str | None = Field(
        default=None,
        max_length=512,
        description="The server's base URL, e.g. http://rm.models:8000.",
        json_schema_extra=validations(_HTTP_URL_RULE),
    )
    from_run: FromRun | None = Field(
        default=None,
        description=(
            "An rm run's checkpoint (final, latest or a step, as model.fromRun), served for this run by the "
            "operator: the run waits (Pending) until that checkpoint exists, and status.rewardModels records it."
        ),
    )
    serving: RewardModelServing | None = Field(
        default=None, description="fromRun: the server's shape (default: one CPU pod with the plain server)."
    )
    model: str = Field(default="rm", min_length=1, max_length=256, description="The model name the server serves.")
    input_format: Literal["messages", "text"] = Field(
        default="messages", description="messages (chat) or text (the conversation flattened), as the server reads."
    )
    api_key: SecretKeyRef | None = Field(
        default=None, description="A Secret key holding the endpoint's API key; it reaches only the pods that call it."
    )
    max_concurrency: int = Field(default=16, ge=1, le=1024, description="Requests in flight per process.")
    timeout_seconds: float = Field(default=30, gt=0, le=3600, description="Per response, retries included.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries on 429 and 5xx (never on other 4xx).")
    failure_score: float = Field(default=0.0, ge=0, le=1, description="What a response that failed scores.")


class RewardComponentKind(enum.StrEnum):
    """What a reward component measures (each is a registered component in the trainer's rubric)."""

    ENVIRONMENT = "environment"  # the environment's own evaluation of the episode (its evaluate tool)
    TOOL_EXECUTION = "toolExecution"  # tool calls that ran without error, among those that parsed
    FORMAT_COMPLIANCE = "formatCompliance"  # well-formed tool calls, and an answer before the limits
    FUNCTION = "function"  # a compute_score function of your own (module.path:function)
    JUDGE = "judge"  # an LLM judge's verdict (set judge)
    REWARD_MODEL = "rewardModel"  # a served reward model's score (set rewardModel)


class RewardComponent(LokaModel):
    """A named, weighted part of the reward; its value is logged per step as reward/<name>/{mean,std,min,max}."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(self.kind == 'function') == has(self.function)",
                "function is required for kind function, and only for it",
                field_path=".function",
            ),
            cel(
                "(self.kind == 'judge') == has(self.judge)",
                "judge is required for kind judge, and only for it",
                field_path=".judge",
            ),
            cel(
                "(self.kind == 'rewardModel') == has(self.rewardModel)",
                "rewardModel is required for kind rewardModel, and only for it",
                field_path=".rewardModel",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="How the component is logged (lowercase letters, digits, _), e.g. task_completion.",
    )
    kind: RewardComponentKind = Field(
        description=(
            "environment, toolExecution, formatCompliance, function (set function), judge (set judge) or "
            "rewardModel (set rewardModel)."
        )
    )
    weight: float = Field(default=1.0, ge=-1000, le=1000, description="Its weight in the sum that is the reward.")
    function: str | None = Field(
        default=None,
        max_length=256,
        description="kind function: module.path:function, importable in the trainer image.",
        json_schema_extra=validations(_FUNCTION_RULE),
    )
    judge: JudgeSettings | None = Field(default=None, description="kind judge: the judge to ask.")
    reward_model: RewardModelSettings | None = Field(
        default=None, description="kind rewardModel: the served reward model to ask."
    )


# task completion 0.8, tool execution 0.1, format compliance 0.1: the rubric tool-use agents are trained with.
DEFAULT_AGENT_RUBRIC: tuple[tuple[str, RewardComponentKind, float], ...] = (
    ("task_completion", RewardComponentKind.ENVIRONMENT, 0.8),
    ("tool_execution", RewardComponentKind.TOOL_EXECUTION, 0.1),
    ("format_compliance", RewardComponentKind.FORMAT_COMPLIANCE, 0.1),
)


def default_agent_rubric() -> list[RewardComponent]:
    return [RewardComponent(name=name, kind=kind, weight=weight) for name, kind, weight in DEFAULT_AGENT_RUBRIC]


class RewardSpec(LokaModel):
    """A reward function of your own, or a rubric of named, weighted components (not both)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.function) != has(self.components)",
                "set exactly one of reward.function (one function) and reward.components (a rubric; a function "
                "of your own is a component of kind function there)",
            ),
            cel(
                "!has(self.components) || self.components.all(c, self.components.exists_one(d, d.name == c.name))",
                "reward.components: each name must be unique",
                field_path=".components",
            ),
        )
    )

    function: str | None = Field(
        default=None,
        max_length=256,
        description="Python reward function as module.path:function, importable in the trainer image.",
        json_schema_extra=validations(_FUNCTION_RULE),
    )
    components: list[RewardComponent] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description=(
            "Named, weighted components summed into the reward, each logged per step. Default for runs with "
            "spec.environment: task_completion 0.8 (environment), tool_execution 0.1, format_compliance 0.1."
        ),
    )


class TrainingSpec(LokaModel):
    epochs: int = Field(default=1, ge=1, le=10000, description="Passes over the training data.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Stop after this many steps.")
    batch_size: int = Field(default=256, ge=1, le=65536, description="Prompts (sft: demonstrations) per training step.")
    mini_batch_size: int | None = Field(
        default=None, ge=1, le=65536, description="RL: prompts per actor update (default: batchSize)."
    )
    micro_batch_size_per_gpu: int = Field(default=4, ge=1, le=4096, description="Sequences per GPU forward pass.")
    learning_rate: float = Field(default=1.0e-6, gt=0, le=1, description="Learning rate (of the actor, for RL).")
    samples_per_prompt: int = Field(default=5, ge=1, le=1024, description="Responses sampled per prompt (group size).")
    kl_loss_coef: float = Field(default=0.001, ge=0, le=100, description="KL loss coefficient (0 turns it off).")
    entropy_coef: float = Field(default=0.0, ge=0, le=100, description="Entropy bonus coefficient.")
    rollout_engine: RolloutEngine = Field(default=RolloutEngine.VLLM, description="verl rollout engine.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="Rollout tensor parallelism.")
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1, description="Rollout engine GPU memory share.")


class PodResources(LokaModel):
    cpu: Quantity = Field(default="4", description="CPU request and limit of the pod's Ray container.")
    memory: Quantity = Field(default="16Gi", description="Memory request and limit of the pod's Ray container.")
    disk: Quantity | None = Field(
        default=None,
        description=(
            "Size of the pod's work volume (the staged model and data, this node's checkpoint shards). "
            "Default: the operator's (chart value operator.workDisk)."
        ),
    )


class Toleration(LokaModel):
    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class ResourcesSpec(LokaModel):
    workers: int = Field(
        default=1, ge=0, le=256, description="Ray worker pods, one per node (0: the head alone, for engine trl)."
    )
    gpus_per_worker: int = Field(default=8, ge=0, le=16, description="nvidia.com/gpu per worker pod (0: CPU only).")
    head: PodResources = Field(default=PodResources(cpu="4", memory="16Gi"), description="The Ray head pod.")
    worker: PodResources = Field(default=PodResources(cpu="16", memory="64Gi"), description="Each Ray worker pod.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Node labels every Ray pod must match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    disk_storage_class: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "StorageClass of the pods' work volumes: each becomes a generic ephemeral volume (a PVC per pod) of "
            "this class. Unset: the operator's default; an emptyDir limited to the disk size when that is unset too."
        ),
    )


class QueueSpec(LokaModel):
    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN, description="Kueue LocalQueue in the run's namespace."
    )
    cluster_queue: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="When set, the operator ensures the LocalQueue exists and points at this ClusterQueue.",
    )
    priority_class: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Kueue WorkloadPriorityClass name.",
    )


class CheckpointSpec(LokaModel):
    uri: str = Field(
        max_length=1024,
        description=f"s3:// prefix; checkpoints go to {CHECKPOINT_LAYOUT}.",
        json_schema_extra=validations(cel(_S3_URI_RULE, "must be an s3://<bucket>/<prefix> URI")),
    )
    every: int = Field(default=50, ge=1, le=1_000_000, description="Save every N steps (and always at the end).")
    keep: int = Field(default=3, ge=1, le=1000, description="Checkpoints kept in S3 (older ones are pruned).")
    resume: str = Field(
        default="auto",
        max_length=1024,
        description=f"auto (latest verified checkpoint), never, or s3://.../{STEP_FOLDER_PREFIX}N.",
        json_schema_extra=validations(
            cel(
                f"self == 'auto' || self == 'never' || self.matches('^s3://[^/]+/.*{STEP_FOLDER_PREFIX}[0-9]+/?$')",
                f"must be auto, never, or an s3://<bucket>/<prefix>/{STEP_FOLDER_PREFIX}<N> URI",
            )
        ),
    )


class RolloutsSpec(LokaModel):
    """Which trajectories an RL run keeps (messages, reward components, score) as JSON Lines next to its checkpoints,
    for an Evaluation to judge. Bounded, so that a long run cannot fill the bucket unnoticed.
    """

    every: int = Field(default=1, ge=1, le=1_000_000, description="Keep the rollouts of every Nth step.")
    share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of a kept step's prompt groups written (whole groups, so preferences can pair them).",
    )
    max_per_step: int = Field(
        default=512, ge=1, le=65536, description="At most this many trajectories written per kept step."
    )


class PreemptionSpec(LokaModel):
    """What a run does when Kueue evicts it (preemption, deactivation, quota change) or a user suspends it."""

    grace_period_seconds: int = Field(
        default=DEFAULT_GRACE_PERIOD_SECONDS,
        ge=MIN_GRACE_PERIOD_SECONDS,
        le=3600,
        description=(
            "Seconds between the stop and the end of the pods (their terminationGracePeriodSeconds): the trainer "
            "finishes the step in flight, saves, uploads and marks it within this time, else the run resumes from "
            "its last checkpoint."
        ),
    )


class DeadlineSpec(LokaModel):
    """A wall-time limit for the whole run, across its attempts."""

    seconds: int = Field(
        ge=1,
        le=MAX_DEADLINE_SECONDS,
        description=(
            "Wall seconds from the run's first start (status.startTime), counting every attempt and the time it "
            "stood suspended or queued between them. Then the attempt in flight saves the step it is on (within "
            "spec.preemption.gracePeriodSeconds) and the run ends Failed with reason DeadlineExceeded."
        ),
    )

    def ends(self, start_time: datetime | None) -> datetime | None:
        """When the deadline passes for a run first started at ``start_time`` (None: not started yet)."""
        return None if start_time is None else start_time + timedelta(seconds=self.seconds)


class StorageSpec(LokaModel):
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        description="S3 endpoint URL (MinIO); empty for AWS S3.",
        json_schema_extra=validations(_HTTP_URL_RULE),
    )
    credentials_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
    )


class WandbSpec(LokaModel):
    project: str = Field(min_length=1, max_length=128)
    entity: str | None = Field(default=None, max_length=128)
    mode: Literal["online", "offline", "disabled"] = "online"
    api_key: SecretKeyRef | None = None


class TrackingSpec(LokaModel):
    wandb: WandbSpec | None = None


class HuggingFaceSpec(LokaModel):
    token: SecretKeyRef | None = None


class NotificationEvent(enum.StrEnum):
    """What a run can tell its team about; each is posted once per attempt (Succeeded and Failed once per run)."""

    STARTED = "Started"  # an attempt reached Running
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"  # by spec.suspend, or by Kueue (preemption, eviction)


class SlackNotification(LokaModel):
    webhook: SecretKeyRef = Field(
        description="The Secret key holding the Slack incoming-webhook URL (a secret: never logged or copied)."
    )
    channel: str | None = Field(
        default=None,
        min_length=1,
        max_length=80,
        pattern=r"^[#@]?[a-z0-9][a-z0-9._-]*$",
        description="Channel to post to, where the webhook allows overriding its own (legacy webhooks).",
    )
    # Not `on`: YAML 1.1 (kubectl's YAML, PyYAML) reads an unquoted `on:` key as `true:`.
    events: list[NotificationEvent] = Field(
        default_factory=lambda: list(NotificationEvent),
        min_length=1,
        max_length=4,
        description="The phase transitions to post: Started, Succeeded, Failed, Suspended (default: all).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class NotificationsSpec(LokaModel):
    slack: SlackNotification | None = None


# Spec fields that shape the run; the rest (suspend, maxRestarts, ttlSecondsAfterFinished, notifications) stay
# mutable.
RUN_SHAPING_FIELDS: tuple[str, ...] = (
    "algorithm",
    "engine",
    "image",
    "model",
    "data",
    "reward",
    "environment",
    "training",
    "verlOverrides",
    "resources",
    "queue",
    "checkpoints",
    "rollouts",
    "storage",
    "tracking",
    "huggingface",
    "preemption",
)
MUTABLE_FIELDS: tuple[str, ...] = ("suspend", "maxRestarts", "ttlSecondsAfterFinished", "notifications", "deadline")


class TrainingRunSpec(LokaModel):
    """What to train, on what, and where it may run. The rules that depend on the algorithm are its recipe's
    (loka_api.recipes); the CRD generator adds them.
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.data.responseKey) || !has(self.data.messagesKey)",
                "data.responseKey and data.messagesKey exclude each other: a conversation column already holds "
                "the responses",
                field_path=".data.messagesKey",
            ),
            cel(
                "self.engine != 'verl' || (self.resources.workers >= 1 && self.resources.gpusPerWorker >= 1)",
                "engine verl needs GPU workers: resources.workers and resources.gpusPerWorker must be at least 1 "
                "(use engine trl for CPU)",
                field_path=".resources.gpusPerWorker",
            ),
            cel(
                "!has(self.training.miniBatchSize) || self.training.miniBatchSize <= self.training.batchSize",
                "training.miniBatchSize must not exceed training.batchSize",
                field_path=".training.miniBatchSize",
            ),
            cel(
                f"!has(self.deadline) || self.deadline.seconds > {_GRACE_PERIOD_CEL}",
                "spec.deadline.seconds must be longer than spec.preemption.gracePeriodSeconds "
                f"(default {DEFAULT_GRACE_PERIOD_SECONDS}): the window of its final save",
                field_path=".deadline.seconds",
            ),
        )
    )

    algorithm: AlgorithmName = Field(
        default="grpo",
        max_length=64,
        description="What to train: the algorithm of one of Loka's recipes (the CRD lists them).",
    )
    engine: Engine = Field(default=Engine.VERL, description="verl (Ray, GPUs) or trl (single process, CPU demo).")
    image: str = Field(min_length=1, max_length=512, description="Trainer image (runs `loka-trainer run`).")
    model: ModelSource
    data: DataSpec
    reward: RewardSpec | None = None
    environment: EnvironmentSpec | None = Field(
        default=None,
        description=(
            "RL: MCP servers the model acts in through tools (an agent); the reward defaults to the rubric "
            "task_completion 0.8, tool_execution 0.1, format_compliance 0.1."
        ),
    )
    training: TrainingSpec = Field(default=TrainingSpec())
    verl_overrides: list[
        Annotated[
            str, Field(min_length=3, max_length=512, pattern=r"^(\+{0,2}[A-Za-z_][^=]*=.*|~[A-Za-z_][^=]*(=.*)?)$")
        ]
    ] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra Hydra overrides for the run's verl trainer (key=value), applied last and validated. Keys Loka sets "
            "itself (staged inputs, cluster shape, checkpoints, resume, logger, the actors' environment) are refused, "
            "naming the spec field to set instead."
        ),
    )
    resources: ResourcesSpec = Field(default=ResourcesSpec())
    queue: QueueSpec | None = None
    checkpoints: CheckpointSpec | None = None
    rollouts: RolloutsSpec | None = Field(
        default=None, description="Keep trajectories (messages, reward components, score) for an Evaluation."
    )
    storage: StorageSpec | None = None
    tracking: TrackingSpec | None = None
    huggingface: HuggingFaceSpec | None = None
    max_restarts: int = Field(default=3, ge=0, le=100, description="Whole-run retries (RayJob backoffLimit).")
    suspend: bool = Field(default=False, description="Suspend the run (its Ray cluster is deleted) or resume it.")
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the RayJob this long after the run finished; the TrainingRun keeps its status.",
    )
    notifications: NotificationsSpec | None = Field(
        default=None, description="Who is told when the run starts, succeeds, fails or is suspended."
    )
    preemption: PreemptionSpec | None = Field(
        default=None,
        description=(
            f"Save on preemption or suspension: the grace period to save in (default {DEFAULT_GRACE_PERIOD_SECONDS} s)."
        ),
    )

    deadline: DeadlineSpec | None = Field(
        default=None,
        description=(
            "Wall-time limit of the whole run across attempts, from its first start; it ends Failed "
            "(DeadlineExceeded) after a final save. May be changed while the run runs."
        ),
    )

    @property
    def grace_period_seconds(self) -> int:
        """How long the run's pods live after a stop (spec.preemption.gracePeriodSeconds, or the default)."""
        return self.preemption.grace_period_seconds if self.preemption else DEFAULT_GRACE_PERIOD_SECONDS


# ------------------------------------------------------------------------------------------- status


class RunPhase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(enum.StrEnum):
    VALID = "Valid"
    SECRETS_READY = "SecretsReady"
    SOURCE_READY = "SourceReady"  # only on runs with spec.model.fromRun
    REWARD_MODELS_READY = "RewardModelsReady"  # only on runs that serve reward models (rewardModel.fromRun)
    LAUNCHED = "Launched"  # the RayJob and the trainer's identity exist, or why one could not be created
    ADMITTED = "Admitted"
    CLUSTER_READY = "ClusterReady"
    TRAINING = "Training"
    CHECKPOINT_SAVED = "CheckpointSaved"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Condition(LokaModel):
    """metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)


class Progress(LokaModel):
    step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=0)
    epoch: int | None = Field(default=None, ge=0)
    attempt: int | None = Field(default=None, ge=0, description="The attempt whose trainer reports this progress.")
    resumed_from: int | None = Field(
        default=None, ge=0, description="The checkpoint step that attempt started from (0: from scratch)."
    )


class Metrics(LokaModel):
    reward_mean: float | None = None
    kl_loss: float | None = None
    loss: float | None = Field(default=None, description="sft: the training loss of the last step.")
    response_length_mean: float | None = None
    tokens_per_second: float | None = None
    validation_reward_mean: float | None = Field(
        default=None, description="RL: mean reward on data.validation, at validationStep."
    )
    validation_loss: float | None = Field(default=None, description="sft: loss on data.validation, at validationStep.")
    pairwise_accuracy: float | None = Field(
        default=None,
        description="rm: share of held-out preference pairs the model scores chosen above rejected, at validationStep.",
    )
    validation_step: int | None = Field(
        default=None, ge=0, description="The step the validation figures were measured at (0: before training)."
    )
    seconds_per_step: float | None = Field(default=None, ge=0, description="Mean time of the recent steps.")
    reward_components: dict[str, float] | None = Field(
        default=None,
        max_length=32,
        description="RL with spec.reward.components: each component's mean over the last step, by name "
        "(the metrics file and W&B keep its std, min and max).",
    )
    updated_at: datetime | None = None


class CheckpointStatus(LokaModel):
    step: int | None = Field(default=None, ge=0)
    uri: str | None = None
    time: datetime | None = None


class AttemptRecord(LokaModel):
    """One attempt's Ray job, so that its logs can be found while its Ray cluster still holds them."""

    attempt: int = Field(ge=1)
    ray_job_id: str = Field(max_length=253, alias="rayJobID")
    ray_cluster: str | None = Field(default=None, max_length=253)
    start_time: datetime | None = None


class Interruption(LokaModel):
    """One time the run lost its Ray cluster before it finished, and what it cost."""

    attempt: int = Field(ge=1, description="The attempt that was interrupted.")
    time: datetime = Field(description="When the operator saw the attempt end.")
    reason: str = Field(
        max_length=256,
        description="Why, in Kueue's or KubeRay's words (Preempted, InactiveWorkload, …; Suspended: spec.suspend; "
        "Retrying: the Ray job failed and KubeRay retries it).",
    )
    message: str | None = Field(default=None, max_length=1024)
    step_reached: int | None = Field(default=None, ge=0, description="The last step the attempt finished.")
    resumed_from: int | None = Field(
        default=None, ge=0, description="The checkpoint step the next attempt restored (0: none, from scratch)."
    )
    steps_lost: int | None = Field(default=None, ge=0, description="Steps trained again: stepReached - resumedFrom.")
    gpu_hours_lost: float | None = Field(
        default=None, ge=0, description="stepsLost x seconds per step x the run's GPUs, in hours."
    )
    running_again_after_seconds: float | None = Field(
        default=None, ge=0, description="From the interruption until the next attempt was running again."
    )


class InterruptionTotals(LokaModel):
    """Every interruption of the run, summed (status.interruptions keeps the recent ones only)."""

    count: int = Field(default=0, ge=0)
    steps_lost: int = Field(default=0, ge=0)
    gpu_hours_lost: float = Field(default=0.0, ge=0)
    seconds_stopped: float = Field(default=0.0, ge=0, description="Time from interruptions until running again.")


class NotificationState(enum.StrEnum):
    SENDING = "Sending"  # claimed by one operator replica, which posts it
    SENT = "Sent"
    FAILED = "Failed"  # every retry failed; `message` says why


class NotificationRecord(LokaModel):
    """One notification, recorded before it is posted, so that it is posted once whatever restarts."""

    event: NotificationEvent
    attempt: int = Field(ge=0)
    state: NotificationState
    tries: int = Field(default=0, ge=0)
    sender: str | None = Field(default=None, max_length=253, description="The operator instance that posts it.")
    time: datetime | None = None
    message: str | None = Field(default=None, max_length=1024)


class TrainerFailure(LokaModel):
    """Why the trainer's attempt failed, as the trainer knows it. A permanent failure (an input that is missing or
    unreadable, a reward function that does not import, a configuration verl refuses) fails the run at once: no
    retry on a new Ray cluster could help."""

    attempt: int = Field(ge=1, description="The attempt that failed.")
    reason: str = Field(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$", description="CamelCase, e.g. InputMissing.")
    permanent: bool = False


class SourceStatus(LokaModel):
    """The checkpoint a run started from (spec.model.fromRun): kept after the source run is deleted."""

    run: str | None = Field(default=None, description="The source run's name.")
    uid: str | None = Field(default=None, description="The source run's uid, recorded when first seen.")
    step: int | None = Field(default=None, ge=0, description="The checkpoint step this run starts from.")
    uri: str | None = Field(default=None, description="Where that checkpoint is stored.")


class CheckpointPin(LokaModel):
    """A checkpoint of this run that a dependent run (spec.model.fromRun) resolved and still needs: the trainer
    keeps it when it prunes to checkpoints.keep."""

    step: int = Field(ge=0, description="The pinned checkpoint step.")
    run: str = Field(max_length=253, description="The dependent run that needs it.")
    uid: str = Field(max_length=64, description="The dependent run's uid.")


class RewardModelSource(SourceStatus):
    """A reward-model component's rewardModel.fromRun, resolved: the checkpoint its server serves (kept after the
    source run is deleted)."""

    component: str = Field(max_length=63, description="The reward component (spec.reward.components[].name).")


class TrainDataStatus(LokaModel):
    """spec.data.fromEvaluation, resolved: the preference pairs a run trains on (kept after the Evaluation goes)."""

    evaluation: str | None = Field(default=None, description="The Evaluation's name.")
    uid: str | None = Field(default=None, description="Its uid, when it succeeded.")
    uri: str | None = Field(default=None, description="Its preferences.jsonl, which the trainer stages.")


class RolloutsStatus(LokaModel):
    """Where the run keeps its rollouts (spec.rollouts), and the newest step written."""

    uri: str | None = Field(default=None, description="The s3:// folder of step_<N>.jsonl files.")
    step: int | None = Field(default=None, ge=0, description="The newest step whose rollouts were written.")


class TrainingRunStatus(LokaModel):
    """Operator-owned fields plus the trainer-owned progress, metrics, checkpoint (and message on failure)."""

    phase: RunPhase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    attempt: int | None = Field(default=None, ge=0)
    restarts: int | None = Field(
        default=None, ge=0, description="Times KubeRay retried the run on a new Ray cluster after a failure."
    )
    ray_job: str | None = None
    ray_cluster: str | None = None
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    progress: Progress | None = None
    metrics: Metrics | None = None
    checkpoint: CheckpointStatus | None = None
    rollouts: RolloutsStatus | None = None
    source: SourceStatus | None = Field(default=None, description="spec.model.fromRun, resolved: the lineage.")
    train_data: TrainDataStatus | None = Field(
        default=None, description="spec.data.fromEvaluation, resolved: the preference pairs trained on."
    )
    reward_models: list[RewardModelSource] = Field(
        default_factory=list,
        max_length=16,
        description="Each reward component's rewardModel.fromRun, resolved: the checkpoint the operator serves.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["component"]},
    )
    start_time: datetime | None = None
    completion_time: datetime | None = None
    queued_since: datetime | None = Field(default=None, description="When the current attempt started waiting.")
    message: str | None = None
    failure: TrainerFailure | None = Field(default=None, description="Why the trainer's attempt failed.")
    wandb_url: str | None = Field(default=None, alias="wandbURL")
    attempts: list[AttemptRecord] = Field(
        default_factory=list, max_length=16, description="The Ray job of each recent attempt (newest last)."
    )
    notifications: list[NotificationRecord] = Field(
        default_factory=list, max_length=32, description="What was posted, or is being posted, for this run."
    )
    pins: list[CheckpointPin] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Checkpoints of this run that dependent runs (spec.model.fromRun) resolved and need until they have a "
            "checkpoint of their own: pruning keeps them."
        ),
    )
    interruptions: list[Interruption] = Field(
        default_factory=list,
        max_length=16,
        description="Preemptions, suspensions and retries of the run (newest last), each with what it cost.",
    )
    interruption_totals: InterruptionTotals | None = Field(default=None, description="All interruptions, summed.")


class ObjectMeta(LokaModel):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingRun(LokaModel):
    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TrainingRunSpec
    status: TrainingRunStatus = Field(default_factory=TrainingRunStatus)


# spec.environment lives in its own module, which builds on the pieces above.
from loka_api.environments import EnvironmentSpec  # noqa: E402

TrainingRunSpec.model_rebuild()
TrainingRun.model_rebuild()
