"""The generated CRD on the real API server: it installs, and bad manifests are refused with a useful message."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from localcluster.controlplane import LocalCluster
from tests.operator.conftest import run_manifest
from tests.operator.kube import Kube


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> tuple[int, str]:
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    return result.returncode, result.stderr + result.stdout


def with_spec(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(base)
    node = manifest["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return manifest


# (field path, bad value, words the API server's message must contain: the field and what is accepted)
INVALID: list[tuple[str, Any, list[str]]] = [
    ("resources.gpusPerWorker", -1, ["spec.resources.gpusPerWorker", "greater than or equal to 0"]),
    ("resources.workers", "two", ["spec.resources.workers", "integer"]),
    ("algorithm", "ppo-ish", ["spec.algorithm", "grpo", "rloo"]),
    ("engine", "deepspeed", ["spec.engine", "verl", "trl"]),
    ("checkpoints.keep", 0, ["spec.checkpoints.keep", "greater than or equal to 1"]),
    ("checkpoints.resume", "sometimes", ["spec.checkpoints.resume", "auto, never", "global_step_"]),
    ("checkpoints.uri", "/mnt/ckpt", ["spec.checkpoints.uri", "s3://"]),
    ("model.uri", "Qwen/Qwen2.5", ["spec.model.uri", "hf://", "s3://", "builtin://tiny-qwen2"]),
    ("model.uri", "builtin://gpt-5", ["spec.model.uri", "builtin://tiny-qwen2", "builtin://random-qwen2-0.5b"]),
    ("data.train", "https://example.com/train.parquet", ["spec.data.train", "s3://"]),
    ("data.validation", "builtin://gsm8k", ["spec.data.validation", "s3://", "builtin://arithmetic"]),
    ("training.learningRate", 0, ["spec.training.learningRate", "greater than 0"]),
    ("training.samplesPerPrompt", 1, ["training.samplesPerPrompt", "at least 2"]),
    ("training.batchSize", 3, ["spec.training.batchSize", "divisible by", "gpusPerWorker"]),
    ("resources.head.memory", "lots", ["spec.resources.head.memory", "should match"]),
    ("reward.function", "compute_score", ["spec.reward.function", "module.path:function"]),
    ("verlOverrides", ["no equals sign"], ["spec.verlOverrides[0]", "should match"]),
    ("storage.endpoint", "minio:9000", ["spec.storage.endpoint", "http://"]),
    ("tracking.wandb.mode", "loud", ["spec.tracking.wandb.mode", "online", "offline"]),
    ("queue.name", "Team_A", ["spec.queue.name", "should match"]),
    ("maxRestarts", -3, ["spec.maxRestarts", "greater than or equal to 0"]),
    ("deadline.seconds", 0, ["spec.deadline.seconds", "greater than or equal to 1"]),
    ("deadline.seconds", 45, ["spec.deadline.seconds", "longer than spec.preemption.gracePeriodSeconds (default 60)"]),
]


@pytest.mark.parametrize(("path", "value", "words"), INVALID, ids=[case[0] + "=" + str(case[1]) for case in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(  # noqa: PLR0917
    cluster: LocalCluster, kube: Kube, ns: str, path: str, value: Any, words: list[str]
) -> None:
    code, output = apply(cluster, with_spec(run_manifest("bad", ns), path, value))
    assert code != 0, f"the API server accepted spec.{path}={value!r}"
    for word in words:
        assert word in output, f"{word!r} missing from: {output}"
    assert kube.run(ns, "bad") is None


def test_missing_required_fields_are_named(cluster: LocalCluster, ns: str) -> None:
    manifest = run_manifest("bad", ns)
    del manifest["spec"]["image"], manifest["spec"]["model"]
    code, output = apply(cluster, manifest)
    assert code != 0
    assert "spec.image: Required value" in output
    assert "spec.model: Required value" in output


def test_name_kuberay_cannot_use_is_rejected(cluster: LocalCluster, ns: str) -> None:
    code, output = apply(cluster, run_manifest("x" * 48, ns))
    assert code != 0
    assert "metadata.name" in output and "47 characters" in output


def test_valid_run_gets_schema_defaults(cluster: LocalCluster, kube: Kube, ns: str) -> None:
    manifest = run_manifest("defaults", ns)
    del manifest["spec"]["training"]
    code, output = apply(cluster, manifest)
    assert code == 0, output
    spec = (kube.run(ns, "defaults") or {})["spec"]
    assert spec["algorithm"] == "grpo"
    assert spec["training"]["samplesPerPrompt"] == 5
    assert spec["checkpoints"]["resume"] == "auto"
    assert spec["maxRestarts"] == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}),
        ("image", "ghcr.io/acme/loka:other"),
        ("resources", {"workers": 2, "gpusPerWorker": 8}),
        ("queue", {"name": "another-queue"}),
    ],
)
def test_run_shaping_fields_are_immutable_after_creation(
    cluster: LocalCluster, kube: Kube, ns: str, field: str, value: Any
) -> None:
    assert apply(cluster, run_manifest("fixed", ns))[0] == 0
    code, output = apply(cluster, with_spec(run_manifest("fixed", ns), field, value))
    assert code != 0
    assert f"spec.{field}" in output and "immutable" in output and "suspend, maxRestarts" in output


def test_an_optional_run_shaping_field_may_not_be_removed_after_creation(cluster: LocalCluster, ns: str) -> None:
    assert apply(cluster, run_manifest("kept", ns))[0] == 0
    without = run_manifest("kept", ns)
    del without["spec"]["checkpoints"]
    code, output = apply(cluster, without)
    assert code != 0
    assert "spec.checkpoints" in output and "immutable" in output


def test_suspend_max_restarts_and_ttl_stay_mutable(cluster: LocalCluster, kube: Kube, ns: str) -> None:
    assert apply(cluster, run_manifest("mutable", ns))[0] == 0
    changed = run_manifest("mutable", ns, suspend=True, maxRestarts=7, ttlSecondsAfterFinished=60)
    code, output = apply(cluster, changed)
    assert code == 0, output
    spec = (kube.run(ns, "mutable") or {})["spec"]
    assert (spec["suspend"], spec["maxRestarts"], spec["ttlSecondsAfterFinished"]) == (True, 7, 60)


def test_printer_columns(cluster: LocalCluster, ns: str) -> None:
    assert apply(cluster, run_manifest("columns", ns))[0] == 0
    header = cluster.kubectl("get", "tr", "-n", ns).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STEP", "REWARD", "CHECKPOINT", "QUEUE", "AGE"]
    assert "columns" in cluster.kubectl("get", "loka", "-n", ns).stdout  # the category


def sft(ns: str, **data: Any) -> dict[str, Any]:
    return run_manifest("sft", ns, algorithm="sft", data={"train": "s3://loka/demos.parquet", **data})


# (manifest change, words the API server's message must contain)
INVALID_STAGES: list[tuple[str, Any, list[str]]] = [
    ("sft without responses", sft, ["algorithm sft trains on demonstrations", "data.responseKey"]),
    (
        "sft with responses and conversations",
        lambda ns: sft(ns, responseKey="answer", messagesKey="messages"),
        ["data.responseKey and data.messagesKey exclude each other"],
    ),
    (
        "sft with a reward",
        lambda ns: with_spec(sft(ns, responseKey="a"), "reward", {"function": "m:f"}),
        ["spec.reward", "algorithm sft uses no reward"],
    ),
    (
        "a reward function and a rubric",
        lambda ns: with_spec(
            run_manifest("both-rewards", ns),
            "reward",
            {"function": "m:f", "components": [{"name": "task", "kind": "environment"}]},
        ),
        ["spec.reward", "set exactly one of reward.function", "reward.components"],
    ),
    (
        "a function component without its function",
        lambda ns: with_spec(run_manifest("fn", ns), "reward", {"components": [{"name": "mine", "kind": "function"}]}),
        ["spec.reward.components[0].function", "required for kind function"],
    ),
    (
        "a judge component without its judge",
        lambda ns: with_spec(run_manifest("judge", ns), "reward", {"components": [{"name": "j", "kind": "judge"}]}),
        ["spec.reward.components[0].judge", "required for kind judge"],
    ),
    (
        "a reward-model component whose endpoint is not a URL",
        lambda ns: with_spec(
            run_manifest("rm-url", ns),
            "reward",
            {"components": [{"name": "rm", "kind": "rewardModel", "rewardModel": {"endpoint": "rm.models:8000"}}]},
        ),
        ["spec.reward.components[0].rewardModel.endpoint", "must be an http:// or https:// URL"],
    ),
    (
        "two components of one name",
        lambda ns: with_spec(
            run_manifest("twice", ns),
            "reward",
            {"components": [{"name": "task", "kind": "environment"}, {"name": "task", "kind": "toolExecution"}]},
        ),
        ["spec.reward.components", "each name must be unique"],
    ),
    (
        "a component kind that is not one",
        lambda ns: with_spec(run_manifest("kind", ns), "reward", {"components": [{"name": "x", "kind": "oracle"}]}),
        ["spec.reward.components[0].kind", "environment", "toolExecution"],
    ),
    (
        "sft with an environment",
        lambda ns: with_spec(
            sft(ns, responseKey="a"), "environment", {"servers": [{"name": "e", "url": "http://e/mcp"}]}
        ),
        ["spec.environment", "applies to reinforcement learning"],
    ),
    (
        "an environment server with both a URL and an image",
        lambda ns: with_spec(
            run_manifest("both-env", ns),
            "environment",
            {"servers": [{"name": "e", "url": "http://e/mcp", "run": {"image": "org/env:1"}}]},
        ),
        ["spec.environment.servers[0]", "set exactly one of url", "run (an image)"],
    ),
    (
        "two environment servers of one name",
        lambda ns: with_spec(
            run_manifest("two-env", ns),
            "environment",
            {"servers": [{"name": "e", "url": "http://a/mcp"}, {"name": "e", "url": "http://b/mcp"}]},
        ),
        ["spec.environment.servers", "each name must be unique"],
    ),
    (
        "an unknown tool-call format",
        lambda ns: with_spec(
            run_manifest("fmt", ns),
            "environment",
            {"servers": [{"name": "e", "url": "http://a/mcp"}], "toolCallFormat": "xml"},
        ),
        ["spec.environment.toolCallFormat", "hermes"],
    ),
    (
        "grpo with a response column",
        lambda ns: with_spec(run_manifest("rl", ns), "data.responseKey", "answer"),
        ["apply to algorithm sft only"],
    ),
    (
        "a model and a source run",
        lambda ns: with_spec(run_manifest("both", ns), "model.fromRun", {"name": "sft"}),
        ["spec.model", "set exactly one of model.uri", "model.fromRun"],
    ),
    (
        "neither a model nor a source run",
        lambda ns: with_spec(run_manifest("neither", ns), "model", {}),
        ["set exactly one of model.uri"],
    ),
    (
        "a run that starts from itself",
        lambda ns: with_spec(run_manifest("loop", ns), "model", {"fromRun": {"name": "loop"}}),
        ["spec.model.fromRun.name", "must name another run"],
    ),
    (
        "a checkpoint that is not final, latest or a step",
        lambda ns: with_spec(run_manifest("odd", ns), "model", {"fromRun": {"name": "sft", "checkpoint": "best"}}),
        ["spec.model.fromRun.checkpoint", "should match"],
    ),
]


@pytest.mark.parametrize(("what", "build", "words"), INVALID_STAGES, ids=[case[0] for case in INVALID_STAGES])
def test_invalid_stages_are_rejected_naming_the_field(
    cluster: LocalCluster, ns: str, what: str, build: Any, words: list[str]
) -> None:
    code, output = apply(cluster, build(ns))
    assert code != 0, f"the API server accepted {what}"
    for word in words:
        assert word in output, f"{word!r} missing from: {output}"


def test_an_sft_run_and_a_run_from_it_are_accepted_with_their_defaults(
    cluster: LocalCluster, kube: Kube, ns: str
) -> None:
    code, output = apply(cluster, sft(ns, responseKey="answer"))
    assert code == 0, output
    code, output = apply(cluster, with_spec(run_manifest("grpo", ns), "model", {"fromRun": {"name": "sft"}}))
    assert code == 0, output
    assert (kube.run(ns, "grpo") or {})["spec"]["model"]["fromRun"] == {"name": "sft", "checkpoint": "final"}
    wide = cluster.kubectl("get", "tr", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-4:] == ["ALGORITHM", "LOSS", "VALIDATION", "FROM"]
    assert next(line for line in wide if line.startswith("grpo")).split()[-1] == "sft"


# verlOverrides of keys Loka owns, in each of Hydra's forms: (the override, words the refusal must contain)
OWNED_KEYS: list[tuple[str, list[str]]] = [
    ("trainer.save_freq=3", ["spec.verlOverrides", "trainer.save_freq is Loka's to set", "spec.checkpoints.every"]),
    ("+trainer.checkpoint_callback_class=null", ["trainer.checkpoint_callback_class", "spec.checkpoints.uri"]),
    ("++trainer.default_local_dir=/tmp/mine", ["trainer.default_local_dir", "spec.checkpoints.uri"]),
    ("~trainer.resume_mode", ["trainer.resume_mode", "spec.checkpoints.resume"]),
    (
        "+ray_kwargs.ray_init.runtime_env.env_vars.LOKA_CHECKPOINT_WRITER=9/x",
        ["LOKA_CHECKPOINT_WRITER", "spec.checkpoints"],
    ),
    ("~trainer", ["may not replace or delete a whole section", "trainer"]),
]


@pytest.mark.parametrize(("override", "words"), OWNED_KEYS, ids=[case[0] for case in OWNED_KEYS])
def test_a_verl_override_of_a_key_loka_owns_is_refused_naming_what_to_set(
    cluster: LocalCluster, kube: Kube, ns: str, override: str, words: list[str]
) -> None:
    code, output = apply(cluster, run_manifest("owned", ns, verlOverrides=["trainer.total_epochs=2", override]))
    assert code != 0, f"the API server accepted verlOverrides {override!r}"
    for word in words:
        assert word in output, f"{word!r} missing from: {output}"
    assert kube.run(ns, "owned") is None


def test_an_sft_override_of_a_key_loka_owns_is_refused_and_keys_beside_them_are_not(
    cluster: LocalCluster, kube: Kube, ns: str
) -> None:
    code, output = apply(cluster, with_spec(sft(ns, responseKey="a"), "verlOverrides", ["~trainer.max_ckpt_to_keep"]))
    assert code != 0
    assert "trainer.max_ckpt_to_keep is Loka's to set" in output and "spec.checkpoints.keep" in output
    beside = [
        "actor_rollout_ref.model.use_remove_padding=false",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "+ray_kwargs.ray_init.runtime_env.env_vars.NCCL_DEBUG=INFO",
        "trainer.total_epochs=3",
    ]
    code, output = apply(cluster, run_manifest("beside", ns, verlOverrides=beside))
    assert code == 0, output
    assert (kube.run(ns, "beside") or {})["spec"]["verlOverrides"] == beside


def test_a_rubric_of_named_components_is_accepted(cluster: LocalCluster, ns: str) -> None:
    rubric = [
        {"name": "task_completion", "kind": "environment", "weight": 0.8},
        {"name": "tool_execution", "kind": "toolExecution", "weight": 0.1},
        {"name": "answer", "kind": "function", "weight": 0.1, "function": "loka_trainer.rewards.gsm8k:compute_score"},
    ]
    code, output = apply(cluster, with_spec(run_manifest("rubric", ns), "reward", {"components": rubric}))
    assert code == 0, output


def test_an_environment_run_is_accepted(cluster: LocalCluster, ns: str) -> None:
    environment = {
        "servers": [
            {"name": "game", "run": {"image": "org/game:1", "port": 8765}},
            {"name": "web", "url": "https://mcp.example.com/mcp",
             "headers": {"Authorization": "Bearer ${ENV_API_KEY}", "Mcp-Image": "org/env:latest"}},
        ],
        "secretVariables": [{"name": "ENV_API_KEY", "secretRef": {"secret": "env-key", "key": "token"}}],
        "allowedHosts": ["*.envs.svc"],
        "systemPrompt": {"configMap": {"name": "env-prompt", "key": "system.txt"}},
        "onEnvError": "zero",
    }  # fmt: skip
    code, output = apply(cluster, with_spec(run_manifest("agent", ns), "environment", environment))
    assert code == 0, output
