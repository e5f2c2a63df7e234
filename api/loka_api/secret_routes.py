"""Every Secret a run or an Evaluation references, in one table: where the spec names it, which keys it must hold,
which pods get it under which variable (or that only the operator reads it), how the operator checks it, and why.

The operator's pod builders, its Secret check, the trainer's reliance on where a value is and docs/secrets.md
(kept equal by a test) all read this table. A new reference (a judge's key, an environment server's token) is one
row here; nothing else names the pods a Secret reaches.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loka_api import contract
from loka_api.evaluation import EvaluationSpec
from loka_api.models import SecretKeyRef, TrainingRunSpec
from loka_api.reward_models import served_components


class Holder(enum.StrEnum):
    """Where a secret value is: a container of a run's Ray pods, the Evaluation's pod, or the operator itself."""

    HEAD = contract.RAY_HEAD  # the ray-head container of the run's head pod
    WORKER = contract.RAY_WORKER  # the ray-worker container of every worker pod
    SUBMITTER = "submitter"  # the pod that runs `ray job submit` (K8sJobMode)
    EVALUATOR = "evaluator"  # the container of an Evaluation's Job
    REWARD_MODEL_STAGER = "reward-model-stager"  # the init container that stages a served reward model's checkpoint
    OPERATOR = "operator"  # read by the operator itself (given to no pod by it)


SpecT = TypeVar("SpecT", TrainingRunSpec, EvaluationSpec)
# A spec's references on one route: (variable, Secret key). The variable is None where only the operator reads it.
Refs = list[tuple[str | None, SecretKeyRef]]


@dataclass(frozen=True)
class Route(Generic[SpecT]):
    what: str
    field: str  # where the spec names it
    keys: str  # which keys the Secret must hold
    variable: str  # the variable it becomes, as docs/secrets.md shows it
    holders: tuple[Holder, ...]
    why: str
    refs: Callable[[SpecT], Refs]


@dataclass(frozen=True)
class SecretUse:
    """One Secret key a resource references, resolved from its spec."""

    variable: str | None
    secret: str
    key: str
    holders: tuple[Holder, ...]

    def env(self) -> dict[str, Any]:
        """The container variable that carries it, by reference (no value is ever in a manifest)."""
        assert self.variable is not None, f"{self.secret}/{self.key} is read by the operator, given to no pod"
        return {"name": self.variable, "valueFrom": {"secretKeyRef": {"name": self.secret, "key": self.key}}}


def _storage(spec: TrainingRunSpec | EvaluationSpec) -> Refs:
    name = spec.storage.credentials_secret if spec.storage is not None else None
    return [] if name is None else [(key, SecretKeyRef(secret=name, key=key)) for key in contract.STORAGE_SECRET_KEYS]


def _served_reward_models(spec: TrainingRunSpec) -> Refs:
    return _storage(spec) if served_components(spec) else []


def _wandb(spec: TrainingRunSpec) -> Refs:
    wandb = spec.tracking.wandb if spec.tracking is not None else None
    return [(contract.ENV_WANDB_KEY, wandb.api_key)] if wandb is not None and wandb.api_key is not None else []


def _hf(spec: TrainingRunSpec) -> Refs:
    token = spec.huggingface.token if spec.huggingface is not None else None
    return [(contract.ENV_HF_TOKEN, token)] if token is not None else []


def _environment(spec: TrainingRunSpec) -> Refs:
    variables = spec.environment.secret_variables if spec.environment is not None else []
    return [(v.name, v.secret_ref) for v in variables]


def _reward_endpoints(spec: TrainingRunSpec) -> Refs:
    components = (spec.reward.components if spec.reward is not None else None) or []
    refs: Refs = []
    for component in components:
        endpoint = component.judge or component.reward_model
        if endpoint is not None and endpoint.api_key is not None:
            refs.append((contract.reward_api_key_env(component.name), endpoint.api_key))
    return refs


def _slack(spec: TrainingRunSpec) -> Refs:
    slack = spec.notifications.slack if spec.notifications is not None else None
    return [(None, slack.webhook)] if slack is not None else []


def _judges(spec: EvaluationSpec) -> Refs:
    return [(contract.judge_api_key_env(j.name), j.api_key) for j in spec.judges if j.api_key is not None]


RAY_PODS = (Holder.HEAD, Holder.WORKER)
EVERY_KEY_CHECKED = "each key named exists (metadata only)"

RUN_ROUTES: tuple[Route[TrainingRunSpec], ...] = (
    Route(
        "S3 / MinIO credentials",
        "`spec.storage.credentialsSecret: loka-s3`",
        "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (exactly these names)",
        "the same names; `spec.storage.endpoint` becomes `AWS_ENDPOINT_URL`",
        (*RAY_PODS, Holder.OPERATOR),
        "the trainer stages the model and data, restores checkpoints and reads the `latest` marker on the head; "
        "without a shared volume it also stages inputs on every other node and every node uploads the checkpoint "
        "shards it holds (one pinned Ray task per node, `loka_trainer/nodes.py`); the operator reads them once for "
        "a run `fromRun` a source's `final` checkpoint, to read that source's marker",
        _storage,
    ),
    Route(
        "S3 / MinIO credentials, for a reward model the operator serves",
        "`spec.storage.credentialsSecret`, when a reward component has `rewardModel.fromRun`",
        "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`",
        "the same names",
        (Holder.REWARD_MODEL_STAGER,),
        "the init container of each served reward model's pods stages the source run's checkpoint (verified "
        "against its manifest) into a volume; the serving container (`loka_trainer.rm_server` or vLLM) reads it "
        "there and gets no credentials",
        _served_reward_models,
    ),
    Route(
        "Weights & Biases API key",
        "`spec.tracking.wandb.apiKey: {secret: loka-secrets, key: wandb-api-key}`",
        "any key you name",
        f"`{contract.ENV_WANDB_KEY}`",
        (Holder.HEAD,),
        "the `trl` engine logs from the trainer process on the head; verl's tracker runs in its driver actor "
        "(TaskRunner), which `loka_trainer.verl_driver` pins to the head (Ray would otherwise place it on any node)",
        _wandb,
    ),
    Route(
        "Hugging Face token",
        "`spec.huggingface.token: {secret: loka-secrets, key: hf-token}`",
        "any key you name",
        f"`{contract.ENV_HF_TOKEN}`",
        RAY_PODS,
        "an `hf://` model is loaded by id where it is used: the driver's tokenizer on the head, every actor and "
        "rollout rank on its own worker",
        _hf,
    ),
    Route(
        "An environment's secret variables",
        "`spec.environment.secretVariables: [{name: ENV_API_KEY, secretRef: {secret: env-keys, key: api-key}}]`",
        "any key you name",
        "the `name` you give (`${ENV_API_KEY}` in a server's headers); `LOKA_SECRET_VARIABLES` lists the names",
        RAY_PODS,
        "verl places its agent-loop workers, which open the MCP sessions, on any node; the value is put into a "
        "header only at connect time",
        _environment,
    ),
    Route(
        "An API key of a judge or reward model in a run's reward",
        "`spec.reward.components[].judge.apiKey` (or `.rewardModel.apiKey`)",
        "any key you name",
        f"`{contract.ENV_REWARD_API_KEY_PREFIX}<COMPONENT>` (the component's name, upper case)",
        RAY_PODS,
        "verl scores in its reward workers, which Ray places on any node (the trl engine in the trainer on the "
        "head); the key is read at call time and sent only to that component's endpoint",
        _reward_endpoints,
    ),
    Route(
        "Slack incoming webhook",
        "`spec.notifications.slack.webhook: {secret: loka-secrets, key: slack-webhook}`",
        "any key you name",
        "none: no pod gets it",
        (Holder.OPERATOR,),
        "the operator posts the notices; it reads this one value (and so the whole Secret: keep it apart)",
        _slack,
    ),
)

EVALUATION_ROUTES: tuple[Route[EvaluationSpec], ...] = (
    Route(
        "S3 / MinIO credentials of an Evaluation",
        "`spec.storage.credentialsSecret` of the Evaluation",
        "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`",
        "the same names",
        (Holder.EVALUATOR,),
        "the evaluator reads the rollouts and writes `scores.jsonl` and `preferences.jsonl`",
        _storage,
    ),
    Route(
        "A judge's API key",
        "`spec.judges[].apiKey: {secret: judge-keys, key: openai}`",
        "any key you name",
        f"`{contract.ENV_JUDGE_API_KEY_PREFIX}<JUDGE>` (the judge's name, upper case)",
        (Holder.EVALUATOR,),
        "only the evaluator calls the judges; the key is read at call time and sent only to that judge's endpoint",
        _judges,
    ),
)

# Not named by any spec: the run's Ray token, a Secret the operator makes per run, which KubeRay injects.
RAY_TOKEN_HOLDERS = (Holder.HEAD, Holder.WORKER, Holder.SUBMITTER)


def _resolve(routes: Iterable[Route[SpecT]], spec: SpecT) -> list[SecretUse]:
    return [
        SecretUse(variable, ref.secret, ref.key, route.holders)
        for route in routes
        for variable, ref in route.refs(spec)
    ]


def of_run(spec: TrainingRunSpec) -> list[SecretUse]:
    """Every Secret key run ``spec`` references, with the pods (or the operator) that hold it."""
    return _resolve(RUN_ROUTES, spec)


def of_evaluation(spec: EvaluationSpec) -> list[SecretUse]:
    """Every Secret key Evaluation ``spec`` references; all of them reach only the evaluator's pod."""
    return _resolve(EVALUATION_ROUTES, spec)


def env_for(uses: Iterable[SecretUse], holder: Holder) -> list[dict[str, Any]]:
    """The secretKeyRef variables of the containers of ``holder``: exactly the references routed to it."""
    return [use.env() for use in uses if holder in use.holders]


def wanted(uses: Iterable[SecretUse]) -> dict[str, list[str]]:
    """Each referenced Secret with the keys the operator checks exist before it creates anything."""
    keys: dict[str, list[str]] = {}
    for use in uses:
        if use.key not in keys.setdefault(use.secret, []):
            keys[use.secret].append(use.key)
    return keys


# ------------------------------------------------------------------------------------------- docs/secrets.md

TABLE_HEADER = (
    "| what | where the spec names it | keys | becomes | reaches | why |",
    "|---|---|---|---|---|---|",
)


def markdown_table() -> str:
    """The table docs/secrets.md shows between its ``secret-routes`` markers (a test keeps the two equal)."""
    token = (
        "The run's Ray token",
        "none: the operator makes `loka-run-<run>-ray-token`",
        "`auth_token`",
        f"`{contract.ENV_RAY_AUTH_TOKEN}`",
        RAY_TOKEN_HOLDERS,
        "KubeRay injects it where Ray runs and where `ray job submit` runs: Ray refuses every call without it "
        "([isolation](isolation.md))",
    )
    routes: tuple[Route[Any], ...] = (*RUN_ROUTES, *EVALUATION_ROUTES)
    rows = [(r.what, r.field, r.keys, r.variable, r.holders, r.why) for r in routes]
    lines = list(TABLE_HEADER)
    for what, field, keys, variable, holders, why in [*rows, token]:
        reaches = ", ".join(_HOLDER_WORDS[h] for h in holders)
        lines.append(f"| {what} | {field} | {keys} | {variable} | {reaches} | {why} |")
    return "\n".join(lines)


_HOLDER_WORDS = {
    Holder.HEAD: "head pod (`ray-head`)",
    Holder.WORKER: "worker pods (`ray-worker`)",
    Holder.SUBMITTER: "submitter pod",
    Holder.EVALUATOR: "the Evaluation's pod",
    Holder.REWARD_MODEL_STAGER: "a served reward model's staging init container (`stage`)",
    Holder.OPERATOR: "the operator",
}
