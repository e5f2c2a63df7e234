"""`loka init NAME`: a commented TrainingRun that validates, filled from flags, `.env` and the kube context."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import yaml

from loka_api.contract import (
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    BUILTIN_SCHEME,
    ENV_AWS_ENDPOINT,
    ENV_AWS_KEY_ID,
    ENV_HF_TOKEN,
    ENV_WANDB_KEY,
    MAX_RUN_NAME_LENGTH,
)
from loka_api.dataset import TRAIN_FILE, VALIDATION_FILE
from loka_cli.envfile import first
from loka_cli.environments import (
    EnvOptions,
    ListedTool,
    configmap_yaml,
    environment_yaml,
    list_tools,
    prompt_preview,
    system_prompt,
)
from loka_cli.errors import EXIT_OK, usage

DEFAULT_IMAGE = "ghcr.io/loka-dev/loka:rl-train"
DEFAULT_MODEL = "hf://Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_REWARD = "loka_trainer.rewards.gsm8k:compute_score"
# The Secrets `loka secrets sync` writes, and the keys in them.
RUN_SECRET = "loka-secrets"
S3_SECRET = "loka-s3"
WANDB_KEY, HF_KEY, SLACK_KEY = "wandb-api-key", "hf-token", "slack-webhook"
ENV_SLACK_WEBHOOK = "SLACK_WEBHOOK_URL"
# What `--builtin` writes: inputs the trainer builds itself, so a first run needs nothing uploaded.
BUILTIN_MODEL = f"{BUILTIN_SCHEME}{BUILTIN_MODELS[0]}"
BUILTIN_DATA = f"{BUILTIN_SCHEME}{BUILTIN_DATASETS[0]}"
BUILTIN_STEPS = 20  # a first run on the built-in inputs: long enough to see the reward move, short on a CPU


@dataclass(frozen=True)
class InitOptions:
    name: str
    namespace: str
    model: str | None = None
    data: str | None = None
    gpus: int = 8
    workers: int | None = None
    queue: str | None = None
    cluster_queue: str | None = None
    image: str | None = None
    steps: int | None = None
    checkpoints: str | None = None
    reward: str | None = None
    builtin: bool = False  # the built-in model and data (BUILTIN_MODEL, BUILTIN_DATA) unless --model/--data say else
    environment: EnvOptions | None = None
    tools: tuple[ListedTool, ...] = ()


def _q(value: object) -> str:
    """A YAML scalar (JSON strings are YAML)."""
    return json.dumps(value)


def _data_files(data: str) -> tuple[str, str | None]:
    """`s3://b/p/` (a `loka dataset --upload` prefix) → its train and validation files; a .parquet → itself;
    a built-in dataset → itself for both (the trainer builds each split)."""
    if data.startswith(BUILTIN_SCHEME):
        return data, data
    if data.endswith(".parquet"):
        return data, None
    prefix = data.rstrip("/")
    return f"{prefix}/{TRAIN_FILE}", f"{prefix}/{VALIDATION_FILE}"


def _bucket(uri: str) -> str | None:
    return uri.removeprefix("s3://").split("/", 1)[0] if uri.startswith("s3://") else None


def render(options: InitOptions, env: Mapping[str, str]) -> str:  # noqa: PLR0915 (one line per field)
    """The run as commented YAML."""
    name = options.name
    cpu = options.gpus == 0
    data = (options.data or (BUILTIN_DATA if options.builtin else None) or first(env, "LOKA_DATA")
            or f"s3://loka/datasets/{name}/")  # fmt: skip
    model = options.model or (BUILTIN_MODEL if options.builtin else None) or first(env, "LOKA_MODEL") or DEFAULT_MODEL
    train, validation = _data_files(data)
    bucket = _bucket(train) or "loka"
    checkpoints = options.checkpoints or first(env, "LOKA_CHECKPOINTS") or f"s3://{bucket}/checkpoints/"
    queue = options.queue or first(env, "LOKA_QUEUE")
    cluster_queue = options.cluster_queue or first(env, "LOKA_CLUSTER_QUEUE")
    endpoint = first(env, "LOKA_S3_ENDPOINT", ENV_AWS_ENDPOINT)
    steps = options.steps if options.steps is not None or not options.builtin else BUILTIN_STEPS
    workers = options.workers if options.workers is not None else 1
    lines = [
        f"# {name}: a Loka TrainingRun. Submit it with `loka submit -f {name}.yaml --wait`.",
        "# Every field: `kubectl explain trainingrun.spec --recursive`.",
        "apiVersion: loka.dev/v1alpha1",
        "kind: TrainingRun",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {options.namespace}",
        "spec:",
        "  algorithm: grpo",
        "  engine: trl             # trl: one process on CPU (try things out); verl: Ray on GPUs"
        if cpu
        else "  engine: verl            # verl on Ray and GPUs; trl runs on CPU for trying things out",
        f"  image: {_q(options.image or first(env, 'LOKA_IMAGE') or DEFAULT_IMAGE)}",
        f"  # model: hf://org/model, s3://bucket/prefix, or {BUILTIN_MODEL} (a tiny random Qwen2 the trainer builds)",
        f"  model: {{uri: {_q(model)}}}",
        f"  # data: `loka dataset tasks.jsonl -o data --upload s3://…/` writes these two files, or use {BUILTIN_DATA}",
        f"  # (toy sums the trainer builds): with {BUILTIN_MODEL} a first run needs nothing uploaded",
        "  data:",
        f"    train: {_q(train)}",
    ]
    if validation:
        lines.append(f"    validation: {_q(validation)}")
    agent = options.environment is not None
    lines += [
        "    promptKey: prompt",
        f"    maxPromptLength: {(1024 if cpu else 4096) if agent else (64 if cpu else 512)}",
        f"    maxResponseLength: {(256 if cpu else 2048) if agent else (16 if cpu else 1024)}"
        + ("   # tokens over all turns, tool results included" if agent else ""),
    ]
    if options.environment is not None:
        lines += environment_yaml(name, options.environment, options.tools)
    else:
        lines.append(
            f"  reward: {{function: {_q(options.reward or first(env, 'LOKA_REWARD') or DEFAULT_REWARD)}}}"
            "   # module:function in the image"
        )
    lines += ["  training:"]
    if steps is not None:
        lines.append(f"    maxSteps: {steps}")
    lines += (
        [
            "    batchSize: 4",
            "    samplesPerPrompt: 4       # responses per prompt: GRPO compares them",
            "    learningRate: 1.0e-4",
        ]
        if cpu
        else [
            "    epochs: 1",
            "    batchSize: 256            # prompts per step; x samplesPerPrompt must divide by workers x GPUs",
            "    samplesPerPrompt: 8       # responses per prompt: GRPO compares them",
            "    learningRate: 1.0e-6",
            "    klLossCoef: 0.001",
        ]
    )
    lines += [
        '  # verlOverrides: ["actor_rollout_ref.rollout.gpu_memory_utilization=0.6"]   # any verl key, validated',
        "  resources:",
        f"    workers: {workers}",
        f"    gpusPerWorker: {options.gpus}",
        '    head: {cpu: "2", memory: 4Gi}' if cpu else '    head: {cpu: "8", memory: 32Gi}',
        '    worker: {cpu: "2", memory: 4Gi}' if cpu else '    worker: {cpu: "32", memory: 256Gi}',
    ]
    if queue:
        extra = f", clusterQueue: {cluster_queue}" if cluster_queue else ""
        lines.append(f"  queue: {{name: {queue}{extra}}}   # Kueue LocalQueue; the run waits there for quota")
    else:
        lines.append("  # queue: {name: team-a}        # a Kueue LocalQueue; without one the run starts at once")
    lines += [
        f"  checkpoints: {{uri: {_q(checkpoints)}, every: {2 if cpu else 50}, keep: {2 if cpu else 3}, resume: auto}}",
    ]
    has_s3_keys = bool(first(env, ENV_AWS_KEY_ID))
    if endpoint or has_s3_keys:
        parts = []
        if endpoint:
            parts.append(f"endpoint: {_q(endpoint)}")
        if has_s3_keys:
            parts.append(f"credentialsSecret: {S3_SECRET}")
        lines.append(f"  storage: {{{', '.join(parts)}}}   # as the cluster reaches S3; keys: `loka secrets sync`")
    else:
        lines.append(f"  # storage: {{endpoint: http://minio.minio:9000, credentialsSecret: {S3_SECRET}}}")
    project = first(env, "LOKA_WANDB_PROJECT", "WANDB_PROJECT")
    if first(env, ENV_WANDB_KEY) or project:
        key = f", apiKey: {{secret: {RUN_SECRET}, key: {WANDB_KEY}}}" if first(env, ENV_WANDB_KEY) else ""
        lines.append(f"  tracking: {{wandb: {{project: {_q(project or name)}{key}}}}}")
    else:
        lines.append(
            f"  # tracking: {{wandb: {{project: my-project, apiKey: {{secret: {RUN_SECRET}, key: {WANDB_KEY}}}}}}}"
        )
    if first(env, ENV_HF_TOKEN, "HUGGING_FACE_HUB_TOKEN"):
        lines.append(f"  huggingface: {{token: {{secret: {RUN_SECRET}, key: {HF_KEY}}}}}")
    if first(env, ENV_SLACK_WEBHOOK):
        lines += [
            "  notifications:           # posted once per transition; the webhook URL stays in the Secret",
            f"    slack: {{webhook: {{secret: {RUN_SECRET}, key: {SLACK_KEY}}},"
            " events: [Started, Succeeded, Failed, Suspended]}",
        ]
    else:
        lines.append(f"  # notifications: {{slack: {{webhook: {{secret: {RUN_SECRET}, key: {SLACK_KEY}}}}}}}")
    lines += [
        "  maxRestarts: 3             # whole-run retries; each resumes from the last checkpoint",
        "  ttlSecondsAfterFinished: 86400",
    ]
    return "\n".join(lines) + "\n"


def validate(text: str) -> None:
    """The written YAML must be a run the API models accept (the API server adds its CEL checks)."""
    from pydantic import ValidationError

    from loka_api import TrainingRun

    try:
        TrainingRun.model_validate(yaml.safe_load(text))
    except ValidationError as error:
        first_error = error.errors()[0]
        field = ".".join(str(p) for p in first_error["loc"])
        raise usage(f"{field}: {first_error['msg']} (got {first_error.get('input')!r})") from error


def write_init(
    options: InitOptions, env: Mapping[str, str], *, output: Path | None, force: bool, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", options.name) or len(options.name) > MAX_RUN_NAME_LENGTH:
        raise usage(
            f"NAME: {options.name!r} is not a valid run name",
            f"use lowercase letters, digits and '-', at most {MAX_RUN_NAME_LENGTH} characters",
        )
    for flag, uri, accepted in (("--model", options.model, BUILTIN_MODELS), ("--data", options.data, BUILTIN_DATASETS)):
        if uri and uri.startswith(BUILTIN_SCHEME) and uri.removeprefix(BUILTIN_SCHEME) not in accepted:
            names = ", ".join(BUILTIN_SCHEME + name for name in accepted)
            raise usage(f"{flag}: {uri!r} is not a built-in input", f"accepted: {names}")
    if options.gpus < 0:
        raise usage(f"--gpus: {options.gpus} is negative", "0 (CPU, engine trl) or the GPUs per worker")
    target = output or Path(f"{options.name}.yaml")
    if target.exists() and not force:
        raise usage(f"{target} already exists", "pass --force to overwrite it")
    prompt_file = target.with_name(f"{target.stem}-prompt.yaml")
    if options.environment is not None:
        if prompt_file.exists() and not force:
            raise usage(f"{prompt_file} already exists", "pass --force to overwrite it")
        tools = tuple(list_tools(options.environment.url, options.environment.headers, env))
        options = replace(options, tools=tools)
    text = render(options, env)
    validate(text)
    target.write_text(text)
    print(f"wrote {target} (namespace {options.namespace})", file=out)
    if options.environment is not None:
        prompt = system_prompt(options.tools)
        prompt_file.write_text(configmap_yaml(options.name, options.namespace, prompt))
        names = ", ".join(t.name for t in options.tools)
        print(f"wrote {prompt_file} (the system prompt; tools: {names})", file=out)
        if options.environment.tokenizer is not None:
            preview = target.with_name(f"{target.stem}-prompt-preview.txt")
            preview.write_text(prompt_preview(options.environment.tokenizer, prompt, options.tools))
            print(f"wrote {preview} (the first prompt as the model's chat template renders it)", file=out)
        print(f"next: kubectl apply -f {prompt_file} && loka secrets sync && loka submit -f {target} --wait", file=out)
        return EXIT_OK
    print(f"next: loka secrets sync && loka submit -f {target} --wait", file=out)
    return EXIT_OK
