"""Semantic validation: what the CRD schema cannot say, reported with the field, the value and what would work."""

from __future__ import annotations

from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_operator.validation import validate_spec


def make_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://data/train.parquet"},
        "training": {"batchSize": 64, "samplesPerPrompt": 4},
        "resources": {"workers": 1, "gpusPerWorker": 8},
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def test_a_valid_spec_passes() -> None:
    assert validate_spec(make_spec(verlOverrides=["actor_rollout_ref.rollout.gpu_memory_utilization=0.6"])) is None


def test_unknown_override_key_is_named() -> None:
    problem = validate_spec(make_spec(verlOverrides=["trainer.totl_epochs=3"]))
    assert problem is not None
    assert problem.reason == "InvalidVerlOverrides"
    assert problem.message.startswith("spec.verlOverrides:")
    assert "'trainer.totl_epochs'" in problem.message


def test_mini_batch_that_cannot_split_over_gpus_is_rejected() -> None:
    problem = validate_spec(make_spec(training={"batchSize": 64, "miniBatchSize": 3, "samplesPerPrompt": 2}))
    assert problem is not None
    assert problem.reason == "InvalidBatchShape"
    assert "spec.training.miniBatchSize (3)" in problem.message
    assert "8 GPUs" in problem.message


def test_verl_overrides_on_a_trl_run_are_refused() -> None:
    spec = make_spec(engine="trl", resources={"workers": 0, "gpusPerWorker": 0}, verlOverrides=["trainer.nnodes=1"])
    problem = validate_spec(spec)
    assert problem is not None
    assert "engine verl" in problem.message and "'trl'" in problem.message
    assert validate_spec(make_spec(engine="trl", resources={"workers": 0, "gpusPerWorker": 0})) is None


@pytest.mark.parametrize(
    ("override", "key", "instead"),
    [
        ("trainer.save_freq=3", "trainer.save_freq", "spec.checkpoints.every"),
        ("+trainer.checkpoint_callback_class=null", "trainer.checkpoint_callback_class", "spec.checkpoints.uri"),
        ("++trainer.default_local_dir=/tmp/x", "trainer.default_local_dir", "spec.checkpoints.uri"),
        ("~trainer.resume_mode", "trainer.resume_mode", "spec.checkpoints.resume"),
        (
            "+ray_kwargs.ray_init.runtime_env.env_vars.LOKA_CHECKPOINT_WRITER=9/x",
            "ray_kwargs.ray_init.runtime_env.env_vars.LOKA_CHECKPOINT_WRITER",
            "spec.checkpoints",
        ),
    ],
)
def test_an_override_of_a_key_loka_owns_is_refused_before_composition(override: str, key: str, instead: str) -> None:
    problem = validate_spec(make_spec(verlOverrides=["trainer.total_epochs=2", override]))
    assert problem is not None
    assert problem.reason == "InvalidVerlOverrides"
    assert problem.message.startswith(f"spec.verlOverrides[1] {override!r} would change {key}")
    assert instead in problem.message


def test_an_sft_override_of_a_key_loka_owns_is_refused() -> None:
    data = {"train": "s3://data/train.parquet", "responseKey": "answer"}
    problem = validate_spec(make_spec(algorithm="sft", data=data, verlOverrides=["trainer.max_ckpt_to_keep=4"]))
    assert problem is not None
    assert "trainer.max_ckpt_to_keep" in problem.message and "spec.checkpoints.keep" in problem.message


def environment(**server: Any) -> dict[str, Any]:
    return {"servers": [{"name": "env", "url": "http://env.envs.svc:8765/mcp", **server}]}


def test_an_environment_run_validates_and_composes() -> None:
    spec = make_spec(
        environment={
            **environment(headers={"Authorization": "Bearer ${ENV_API_KEY}", "Mcp-Image": "org/env:1"}),
            "secretVariables": [{"name": "ENV_API_KEY", "secretRef": {"secret": "env", "key": "token"}}],
        }
    )
    assert validate_spec(spec) is None


def test_a_literal_credential_in_a_header_is_refused_without_echoing_it() -> None:
    problem = validate_spec(make_spec(environment=environment(headers={"Authorization": "Bearer sk-live-123"})))
    assert problem is not None and problem.reason == "InvalidEnvironment"
    assert "spec.environment.servers[0].headers.Authorization: a literal credential" in problem.message
    assert "sk-live-123" not in problem.message


def test_a_header_may_reference_only_declared_secret_variables() -> None:
    problem = validate_spec(make_spec(environment=environment(headers={"X-Org": "${AWS_SECRET_ACCESS_KEY}"})))
    assert problem is not None
    assert "${AWS_SECRET_ACCESS_KEY} is not one of environment.secretVariables (none declared)" in problem.message


def test_a_lifecycle_tool_cannot_be_offered_to_the_model() -> None:
    problem = validate_spec(make_spec(environment={**environment(), "allowedTools": ["move", "evaluate"]}))
    assert problem is not None
    assert "spec.environment.allowedTools: 'evaluate' is a lifecycle tool" in problem.message
