"""The verl renderer: what the trainer runs, and what the operator validates before launching."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_api.recipes.sft import MESSAGES_COLUMN as SFT_MESSAGES_COLUMN
from loka_api.render import (
    StagedPaths,
    VerlConfigError,
    compose_verl_config,
    render_launch,
    render_verl_overrides,
    verl_config_name,
)


def verl_command(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    return render_launch(spec, run_name=run_name, namespace=namespace, paths=paths).argv()


PATHS = StagedPaths(
    model="/stage/model",
    train_files=Path("/stage/train.parquet"),
    val_files=Path("/stage/val.parquet"),
    checkpoint_dir=Path("/stage/ckpt"),
    metrics_file=Path("/stage/metrics.jsonl"),
)


def make_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://data/gsm8k/train.parquet", "validation": "s3://data/gsm8k/test.parquet"},
        "reward": {"function": "loka_trainer.rewards.gsm8k:compute_score"},
        "training": {"epochs": 15, "batchSize": 256, "learningRate": 1.0e-6, "samplesPerPrompt": 5},
        "resources": {"workers": 2, "gpusPerWorker": 8},
        "checkpoints": {"uri": "s3://ckpt/", "every": 50, "keep": 3, "resume": "auto"},
        "tracking": {"wandb": {"project": "orbital_rl"}},
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides)


def test_spec_maps_onto_verl_keys() -> None:
    rendered = as_dict(render_verl_overrides(make_spec(), run_name="qwen", namespace="team-a", paths=PATHS))
    assert rendered["algorithm.adv_estimator"] == "grpo"
    assert rendered["actor_rollout_ref.rollout.n"] == "5"
    assert rendered["data.train_files"] == "/stage/train.parquet"
    assert rendered["data.val_files"] == "/stage/val.parquet"
    assert rendered["actor_rollout_ref.model.path"] == "/stage/model"
    assert rendered["trainer.nnodes"] == "2"
    assert rendered["trainer.n_gpus_per_node"] == "8"
    assert rendered["trainer.total_epochs"] == "15"
    assert rendered["trainer.save_freq"] == "50"
    assert rendered["trainer.default_local_dir"] == "/stage/ckpt"
    assert rendered["trainer.resume_mode"] == "auto"
    assert rendered["trainer.experiment_name"] == "qwen"
    assert rendered["trainer.project_name"] == "orbital_rl"
    assert rendered["trainer.logger"] == "[console,file,wandb]"
    # verl 0.9 ignores the legacy top-level custom_reward_function keys: only reward.* is read.
    assert rendered["reward.custom_reward_function.path"] == "pkg://loka_trainer.rewards.gsm8k"
    assert rendered["reward.custom_reward_function.name"] == "compute_score"
    assert "custom_reward_function.path" not in rendered


def test_user_overrides_come_last_and_win() -> None:
    spec = make_spec(verlOverrides=["actor_rollout_ref.rollout.n=8"])
    overrides = render_verl_overrides(spec, run_name="r", namespace="n", paths=PATHS)
    assert overrides[-1] == "actor_rollout_ref.rollout.n=8"
    assert compose_verl_config(overrides).actor_rollout_ref.rollout.n == 8


def test_rendered_arguments_compose_against_verls_packaged_config() -> None:
    config = compose_verl_config(render_verl_overrides(make_spec(), run_name="r", namespace="n", paths=PATHS))
    assert config.algorithm.adv_estimator == "grpo"
    assert config.trainer.checkpoint_callback_class == PATHS.checkpoint_callback_class
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH == "/stage/metrics.jsonl"


@pytest.mark.parametrize(
    ("resume", "mode"),
    [("never", "disable"), ("auto", "auto"), ("s3://ckpt/team-a/qwen/global_step_100", "resume_path")],
)
def test_resume_modes(resume: str, mode: str) -> None:
    paths = StagedPaths(
        model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"), resume_from=Path("/c/global_step_100")
    )
    spec = make_spec(checkpoints={"uri": "s3://ckpt/", "resume": resume})
    rendered = as_dict(render_verl_overrides(spec, run_name="r", namespace="n", paths=paths))
    assert rendered["trainer.resume_mode"] == mode
    if mode == "resume_path":
        assert rendered["trainer.resume_from_path"] == "/c/global_step_100"
    compose_verl_config([f"{k}={v}" for k, v in rendered.items()])


def test_no_checkpoints_means_no_saving_and_no_resume() -> None:
    rendered = as_dict(render_verl_overrides(make_spec(checkpoints=None), run_name="r", namespace="n", paths=PATHS))
    assert rendered["trainer.save_freq"] == "-1"
    assert rendered["trainer.resume_mode"] == "disable"


def test_without_validation_data_verl_skips_validation() -> None:
    paths = StagedPaths(model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"))
    spec = make_spec(data={"train": "s3://data/t.parquet"})
    rendered = as_dict(render_verl_overrides(spec, run_name="r", namespace="n", paths=paths))
    assert rendered["trainer.val_before_train"] == "false"
    assert rendered["trainer.test_freq"] == "-1"


def test_values_with_hydra_metacharacters_are_quoted() -> None:
    paths = StagedPaths(model="Qwen/Qwen2.5 0.5B", train_files=Path("/t,x.parquet"), checkpoint_dir=Path("/c"))
    overrides = render_verl_overrides(make_spec(), run_name="r", namespace="n", paths=paths)
    config = compose_verl_config(overrides)
    assert config.actor_rollout_ref.model.path == "Qwen/Qwen2.5 0.5B"
    assert config.data.train_files == "/t,x.parquet"


def test_verl_command_runs_main_ppo_with_the_overrides() -> None:
    command = verl_command(make_spec(), run_name="r", namespace="n", paths=PATHS)
    # verl's main_ppo, through the trainer image's driver that pins its TaskRunner to the head.
    assert command[:3] == [sys.executable, "-m", "loka_trainer.verl_driver"]
    assert command[3:] == render_verl_overrides(make_spec(), run_name="r", namespace="n", paths=PATHS)


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("trainer.no_such_key=1", "trainer.no_such_key", "unknown verl config key"),
        ("actor_rollout_ref.rollout.nn=4", "actor_rollout_ref.rollout.nn", "unknown verl config key"),
        ("+trainer.save_freq=3", "trainer.save_freq", "already exists"),
        ("~trainer.nope", "trainer.nope", "cannot delete"),
        ("trainer.logger=[console", "trainer.logger", "cannot parse"),
        ("actor_rollout_ref.rollout.n=abc", "actor_rollout_ref.rollout.n", "expects a int"),
    ],
)
def test_bad_overrides_are_reported_by_key(override: str, key: str, words: str) -> None:
    overrides = render_verl_overrides(make_spec(verlOverrides=[override]), run_name="r", namespace="n", paths=PATHS)
    with pytest.raises(VerlConfigError) as caught:
        compose_verl_config(overrides)
    assert caught.value.key == key
    assert words in str(caught.value)
    assert override.lstrip("~") in str(caught.value)


def test_new_keys_can_be_added_with_plus() -> None:
    spec = make_spec(verlOverrides=["+ray_kwargs.ray_init.runtime_env.env_vars.NCCL_DEBUG=INFO"])
    config = compose_verl_config(render_verl_overrides(spec, run_name="r", namespace="n", paths=PATHS))
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.NCCL_DEBUG == "INFO"


def test_an_explicit_resume_point_seeds_only_a_run_without_a_checkpoint_of_its_own() -> None:
    spec = make_spec(checkpoints={"uri": "s3://ckpt/", "resume": "s3://ckpt/n/r/global_step_5"})
    seeding = StagedPaths(
        model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"), resume_from=Path("/c/s")
    )
    continuing = StagedPaths(model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"))
    assert as_dict(render_verl_overrides(spec, run_name="r", namespace="n", paths=seeding))["trainer.resume_mode"] == (
        "resume_path"
    )
    rendered = as_dict(render_verl_overrides(spec, run_name="r", namespace="n", paths=continuing))
    assert rendered["trainer.resume_mode"] == "auto"  # the run's own latest, restored into checkpoint_dir


def test_verl_keeps_one_local_checkpoint_whatever_s3_keeps() -> None:
    spec = make_spec(checkpoints={"uri": "s3://ckpt/", "keep": 5})
    rendered = as_dict(render_verl_overrides(spec, run_name="r", namespace="n", paths=PATHS))
    assert rendered["trainer.max_actor_ckpt_to_keep"] == "1"


def test_api_and_renderer_load_without_kopf_kubernetes_or_hydra() -> None:
    # The trainer image imports these; pulling in the operator's stack (or Hydra before composing) would be a bug.
    import subprocess

    code = (
        "import sys, loka_api, loka_api.render;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes', 'aiohttp', 'hydra', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------- SFT


def make_sft_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "algorithm": "sft",
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {
            "train": "s3://data/demos/train.parquet",
            "validation": "s3://data/demos/test.parquet",
            "responseKey": "answer",
            "maxPromptLength": 512,
            "maxResponseLength": 1024,
        },
        "training": {"epochs": 3, "batchSize": 64, "learningRate": 1.0e-5, "microBatchSizePerGpu": 2},
        "resources": {"workers": 2, "gpusPerWorker": 8},
        "checkpoints": {"uri": "s3://ckpt/", "every": 20, "keep": 2, "resume": "auto"},
        "tracking": {"wandb": {"project": "orbital_sft"}},
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def test_sft_renders_verls_sft_trainer_keys_and_composes_in_its_config() -> None:
    spec = make_sft_spec()
    overrides = render_verl_overrides(spec, run_name="qwen-sft", namespace="team-a", paths=PATHS)
    config = compose_verl_config(overrides, config_name=verl_config_name(spec))
    assert verl_config_name(spec) == "sft_trainer_engine"
    assert (config.data.train_files, config.data.val_files) == ("/stage/train.parquet", "/stage/val.parquet")
    assert config.data.messages_key == SFT_MESSAGES_COLUMN  # the trainer stages demonstrations as conversations
    assert config.data.max_length == 512 + 1024  # maxLength defaults to prompt + response
    assert (config.data.train_batch_size, config.data.micro_batch_size_per_gpu) == (64, 2)
    assert config.data.use_dynamic_bsz is False
    assert config.model.path == "/stage/model"
    assert config.optim.lr == 1.0e-5
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node, config.trainer.total_epochs) == (2, 8, 3)
    # S3 keeps checkpoints.keep; one local copy is enough to upload from (as for RL).
    assert (config.trainer.save_freq, config.trainer.max_ckpt_to_keep, config.trainer.test_freq) == (20, 1, 20)
    assert (config.trainer.default_local_dir, config.trainer.resume_mode) == ("/stage/ckpt", "auto")
    assert list(config.trainer.logger) == ["console", "file", "wandb"]
    assert config.trainer.experiment_name == "qwen-sft"
    assert not any(o.startswith(("+ray_kwargs", "algorithm.", "actor_rollout_ref.", "reward.")) for o in overrides)


def test_sft_runs_the_trainer_images_wrapper_of_verls_ray_sft_trainer() -> None:
    spec = make_sft_spec()
    command = verl_command(spec, run_name="r", namespace="n", paths=PATHS)
    assert command[:3] == [sys.executable, "-m", "loka_trainer.verl_sft"]


def test_sft_with_a_messages_column_and_max_length_passes_them_through() -> None:
    spec = make_sft_spec(data={"train": "s3://d/t.parquet", "messagesKey": "conversation", "maxLength": 4096})
    paths = StagedPaths(model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"))
    config = compose_verl_config(
        render_verl_overrides(spec, run_name="r", namespace="n", paths=paths), config_name="sft_trainer_engine"
    )
    assert (config.data.messages_key, config.data.max_length) == ("conversation", 4096)
    # Without validation data verl's SFT trainer must never validate (it would iterate a missing dataloader).
    assert (config.data.val_files, config.trainer.test_freq) == (None, -1)


def test_sft_overrides_are_checked_against_the_sft_config_not_ppos() -> None:
    spec = make_sft_spec(verlOverrides=["actor_rollout_ref.rollout.n=4"])
    overrides = render_verl_overrides(spec, run_name="r", namespace="n", paths=PATHS)
    with pytest.raises(VerlConfigError) as caught:
        compose_verl_config(overrides, config_name=verl_config_name(spec))
    assert "not in verl's sft_trainer_engine config" in str(caught.value)
    fine = make_sft_spec(verlOverrides=["engine.ulysses_sequence_parallel_size=2", "optim.weight_decay=0.1"])
    config = compose_verl_config(
        render_verl_overrides(fine, run_name="r", namespace="n", paths=PATHS), config_name="sft_trainer_engine"
    )
    assert config.engine.ulysses_sequence_parallel_size == 2
