"""Semantic validation: what the CRD schema cannot say, reported with the field, the value and what would work."""

from __future__ import annotations

from typing import Any

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
