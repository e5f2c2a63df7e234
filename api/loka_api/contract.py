"""What the operator and the trainer must agree on, written once.

- the environment the operator gives the trainer's pods, and the trainer gives verl's actors;
- where a run's checkpoints live in S3 and what marks one complete;
- which `status` fields the trainer writes, and which only the operator writes.

Both sides import these names; neither spells them out again.
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------- identity

# KubeRay names the Ray cluster `<rayjob>-<5 chars>` and its services `<cluster>-head-svc`; the RayJob is
# named after the run, so a run's name is bounded by what those derived names may hold.
MAX_RUN_NAME_LENGTH = 47

# What the RayJob runs on the Ray head: the trainer image's console script.
TRAINER_ENTRYPOINT = "loka-trainer run"

# ---------------------------------------------------------------------------------- environment

# Set by the operator on the trainer's pods: which TrainingRun this trainer serves.
ENV_RUN_NAME = "LOKA_RUN_NAME"
ENV_RUN_NAMESPACE = "LOKA_RUN_NAMESPACE"

# S3 (the standard AWS variables boto3 reads). The endpoint is plain; the keys come by secretKeyRef.
ENV_AWS_ENDPOINT = "AWS_ENDPOINT_URL"
ENV_AWS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET = "AWS_SECRET_ACCESS_KEY"
ENV_AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
# The keys the storage credentials Secret (spec.storage.credentialsSecret) must hold.
STORAGE_SECRET_KEYS = (ENV_AWS_KEY_ID, ENV_AWS_SECRET)

# Tracking and model hub credentials, by secretKeyRef from the Secrets the spec names.
ENV_WANDB_KEY = "WANDB_API_KEY"
ENV_HF_TOKEN = "HF_TOKEN"

# KubeRay gives every Ray container of a RayCluster with token auth this variable, from the run's token Secret.
ENV_RAY_AUTH_TOKEN = "RAY_AUTH_TOKEN"

# Every variable whose value is a secret: never on a command line, in Ray's runtime_env, a log or status.
SECRET_ENV = frozenset({ENV_AWS_SECRET, ENV_AWS_SESSION_TOKEN, ENV_WANDB_KEY, ENV_HF_TOKEN, ENV_RAY_AUTH_TOKEN})

# The two kinds of Ray pod of a run (loka_api.secret_routes says which secret reaches which).
RAY_HEAD = "head"
RAY_WORKER = "worker"

# spec.environment.secretVariables (${VAR} in MCP headers): their names (never values) are listed in this plain
# variable, so the trainer redacts their values.
ENV_SECRET_VARIABLES = "LOKA_SECRET_VARIABLES"


# Where the trainer container finds its ServiceAccount token (a projected volume; the file is replaced as the
# kubelet refreshes it, so it is read again before each API call). Only the head's trainer container mounts it.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# Set by KubeRay on every Ray pod (from the pod's ray.io/cluster label). KubeRay makes a new RayCluster, with a
# new name, for every attempt of a RayJob (each retry, each resume after a suspension or preemption).
ENV_RAY_CLUSTER_NAME = "RAY_CLUSTER_NAME"

# Set by the trainer for verl's actors (through Ray's runtime_env): where the checkpoint callback uploads, the
# run's uid, and the attempt that writes (the writer identity the marker is fenced by, see below).
ENV_CHECKPOINT_PREFIX = "LOKA_CHECKPOINT_PREFIX"
ENV_CHECKPOINT_KEEP = "LOKA_CHECKPOINT_KEEP"
ENV_CHECKPOINT_WRITER = "LOKA_CHECKPOINT_WRITER"
ENV_RUN_UID = "LOKA_RUN_UID"
ENV_WANDB_MODE = "WANDB_MODE"
# The trainer's local staging root: the operator mounts each Ray pod's work volume there (default $HOME/loka-work).
ENV_WORK_DIR = "LOKA_WORK_DIR"
# Set by the trainer for verl's actors: the folder on the head node through which it asks the checkpoint callback
# for a save before it stops verl, and learns whether an upload is in flight (loka_trainer.stop_handshake).
ENV_STOP_HANDSHAKE = "LOKA_STOP_HANDSHAKE"
# Set by the trainer for verl's TaskRunner when spec.rollouts is set: the spec as JSON.
ENV_ROLLOUTS = "LOKA_ROLLOUTS"

# -------------------------------------------------------------------------------------- stopping
#
# A preemption or suspension deletes the run's pods; each gets spec.preemption.gracePeriodSeconds between SIGTERM
# and SIGKILL (its terminationGracePeriodSeconds). The operator and the trainer split that time the same way:
# Ray's job supervisor gives the trainer all but RAY_STOP_RESERVE_S of it (RAY_JOB_STOP_WAIT_TIME_S); of that the
# trainer keeps TRAINER_STOP_RESERVE_S to stop verl and write its closing status, and the rest is the window in
# which the step in flight ends with a saved, uploaded and marked checkpoint.
DEFAULT_GRACE_PERIOD_SECONDS = 60
MIN_GRACE_PERIOD_SECONDS = 30
RAY_STOP_RESERVE_S = 5
TRAINER_STOP_RESERVE_S = 18
ENV_RAY_JOB_STOP_WAIT = "RAY_JOB_STOP_WAIT_TIME_S"


def ray_job_stop_wait_s(grace_period_seconds: int) -> int:
    """What Ray's job supervisor waits between SIGTERM to `loka-trainer run` and SIGKILL."""
    return grace_period_seconds - RAY_STOP_RESERVE_S


def save_window_s(grace_period_seconds: int) -> int:
    """How long the trainer may take to end the step in flight with a checkpoint after a stop."""
    return max(ray_job_stop_wait_s(grace_period_seconds) - TRAINER_STOP_RESERVE_S, 0)


# ------------------------------------------------------------------------------- built-in inputs
#
# Inputs the trainer builds itself, so a smoke run downloads nothing: model.uri builtin://<model>,
# data.train / data.validation builtin://<dataset> (each field gets its own split of the dataset).

BUILTIN_SCHEME = "builtin://"
# A randomly initialised Qwen2 with a tokenizer trained on the spot: tiny (CPU-sized), and Qwen2.5-0.5B's shape.
BUILTIN_MODELS = ("tiny-qwen2", "random-qwen2-0.5b")
# GSM8K-shaped toy tasks in verl's RL parquet schema.
BUILTIN_DATASETS = ("arithmetic",)

# ------------------------------------------------------------------------------ checkpoints in S3
#
#   <checkpoints.uri>/<namespace>/<run>/<uid>/global_step_<N>/...                the files the engine wrote
#   <checkpoints.uri>/<namespace>/<run>/<uid>/global_step_<N>/loka-manifest.json every file's path, size, CRC64NVME
#   <checkpoints.uri>/<namespace>/<run>/<uid>/latest                             the marker: step, uri, writer
#
# Keyed by the run's uid: a run deleted and created again under the same name starts from scratch and never
# prunes its predecessor's checkpoints (name one in `checkpoints.resume` to start from it).
# A checkpoint is complete exactly when its manifest exists; the marker moves only after the manifest.
# One attempt writes at a time: each attempt claims the marker (a conditional write) before it restores
# anything, and every later write of the marker is conditional on the claim still being its own.

STEP_FOLDER_PREFIX = "global_step_"
STEP_FOLDER = re.compile(rf"^{STEP_FOLDER_PREFIX}(\d+)$")
MANIFEST_NAME = "loka-manifest.json"
MARKER_NAME = "latest"
# <run prefix>/pins/global_step_N/<dependent uid>: a checkpoint a dependent run (spec.model.fromRun) still needs.
PINS_FOLDER = "pins"
CHECKPOINT_LAYOUT = f"<uri>/<namespace>/<run>/<uid>/{STEP_FOLDER_PREFIX}N"


# spec.model.fromRun.checkpoint: a step number, the checkpoint a succeeded run ended with, or the one its marker
# names (the newest complete one).
FROM_RUN_FINAL = "final"
FROM_RUN_LATEST = MARKER_NAME


def step_folder(step: int) -> str:
    """The folder of checkpoint step ``step`` (verl's own naming)."""
    return f"{STEP_FOLDER_PREFIX}{step}"


def run_checkpoint_prefix(checkpoints_uri: str, namespace: str, run: str, uid: str) -> str:
    """``s3://bucket/prefix/<namespace>/<run>/<uid>``: where one run's checkpoints and marker live."""
    if not uid:
        msg = f"run {namespace}/{run} has no uid: its checkpoints are keyed by it"
        raise ValueError(msg)
    return "/".join([checkpoints_uri.rstrip("/"), namespace, run, uid])


def checkpoint_uri(run_prefix: str, step: int) -> str:
    """``<run prefix>/global_step_<step>``: one checkpoint of a run (what status and lineage record)."""
    return f"{run_prefix.rstrip('/')}/{step_folder(step)}"


# ------------------------------------------------------------------------------- rollouts in S3
#
#   <run prefix>/rollouts/step_<N>.jsonl     one line per kept trajectory of step N (spec.rollouts)
#
# Next to the checkpoints, under the run's uid: an Evaluation reads them by the run's status.rollouts.uri.

ROLLOUTS_FOLDER = "rollouts"
ROLLOUT_FILE = re.compile(r"^step_(\d+)\.jsonl$")


# Which kept steps an Evaluation reads: the newest, every one, or a list of step numbers.
ROLLOUT_STEPS_LATEST = MARKER_NAME
ROLLOUT_STEPS_ALL = "all"


# An Evaluation's pod: which Evaluation it serves, where each judge's rubric (from its ConfigMap) is mounted as
# <dir>/<judge name>, and the variable holding each judge's API key (from its Secret, only in this pod).
ENV_EVALUATION_NAME = "LOKA_EVALUATION_NAME"
ENV_EVALUATION_NAMESPACE = "LOKA_EVALUATION_NAMESPACE"
EVALUATION_RUBRIC_DIR = "/etc/loka/rubrics"
ENV_JUDGE_API_KEY_PREFIX = "LOKA_JUDGE_API_KEY_"


def judge_api_key_env(judge: str) -> str:
    """The variable holding judge ``judge``'s API key in the pods that call it."""
    return ENV_JUDGE_API_KEY_PREFIX + judge.upper()


# A run's reward components that call an endpoint (a judge, a reward model): the variable holding the component's
# API key (from its Secret, in the Ray pods), and the one holding a judge's rubric (from its ConfigMap key).
ENV_REWARD_API_KEY_PREFIX = "LOKA_REWARD_API_KEY_"
ENV_REWARD_RUBRIC_PREFIX = "LOKA_REWARD_RUBRIC_"


def reward_api_key_env(component: str) -> str:
    """The variable holding reward component ``component``'s API key in the Ray pods."""
    return ENV_REWARD_API_KEY_PREFIX + component.upper()


def reward_rubric_env(component: str) -> str:
    """The variable holding judge component ``component``'s rubric, when it comes from a ConfigMap."""
    return ENV_REWARD_RUBRIC_PREFIX + component.upper()


def rollouts_prefix(run_prefix: str) -> str:
    """``<run prefix>/rollouts``: where one run's kept rollouts live."""
    return f"{run_prefix.rstrip('/')}/{ROLLOUTS_FOLDER}"


def rollout_file(step: int) -> str:
    """The file of step ``step``'s rollouts."""
    return f"step_{step}.jsonl"


# ---------------------------------------------------------------------------------------- status

# Written by the trainer (merge patches of its own run's status, under the per-run Role). `message` is shared:
# the operator explains waits, the trainer says why an attempt stopped or failed.
TRAINER_STATUS_FIELDS = ("progress", "metrics", "checkpoint", "rollouts", "wandbURL", "message", "failure")
# The one trainer field the operator acts on at once: a permanent failure of the current attempt ends the run.
TRAINER_FAILURE_FIELD = "failure"
# Written by the operator only; it computes them from the RayJob and Kueue's Workload, never from the trainer.
OPERATOR_STATUS_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "attempt",
    "restarts",
    "rayJob",
    "rayCluster",
    "dashboardURL",
    "startTime",
    "completionTime",
    "queuedSince",
    "source",
    "pins",
    "trainData",
    "rewardModels",
    "message",
    "attempts",
    "interruptions",
    "interruptionTotals",
    # Recorded by the replica that claims a notification (a conditional write), before it posts it.
    "notifications",
)
SHARED_STATUS_FIELDS = tuple(f for f in TRAINER_STATUS_FIELDS if f in OPERATOR_STATUS_FIELDS)
# Every trainer status patch is a JSON patch that first tests this operator-written field against the attempt the
# trainer serves: once the operator counts a newer attempt, a late patch of an older one is refused atomically.
FENCING_STATUS_FIELD = "attempt"
