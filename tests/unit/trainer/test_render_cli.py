"""`loka-trainer render` prints the exact verl command, and what the trainer launches composes in verl's config."""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from loka_api import TrainingRunSpec
from loka_api.manifest import Writer
from loka_api.recipes.base import LOKA_RUNTIME_ENV
from loka_api.recipes.grpo import ENTRYPOINT as VERL_DRIVER
from loka_api.render import compose_verl_config
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main
from loka_trainer.engines import EngineJob, ResumePoint
from loka_trainer.engines.verl import actor_environment, command
from loka_trainer.staging import StagedInputs

MANIFEST: dict[str, Any] = {
    "apiVersion": "loka.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "qwen-gsm8k", "namespace": "loka"},
    "spec": {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-1.5B-Instruct"},
        "data": {"train": "s3://data/gsm8k/train.parquet", "validation": "s3://data/gsm8k/test.parquet"},
        "reward": {"function": "loka_trainer.rewards.gsm8k:compute_score"},
        "training": {"epochs": 2, "batchSize": 64, "samplesPerPrompt": 4, "learningRate": 1.0e-6},
        "verlOverrides": ["actor_rollout_ref.rollout.gpu_memory_utilization=0.6"],
        "resources": {"workers": 1, "gpusPerWorker": 8},
        "checkpoints": {"uri": "s3://ckpt/", "every": 50, "keep": 3, "resume": "auto"},
        "tracking": {"wandb": {"project": "orbital_rl", "mode": "online"}},
    },
}


def write_manifest(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def rendered_overrides(capsys: pytest.CaptureFixture[str]) -> list[str]:
    argv = shlex.split(capsys.readouterr().out.strip())
    # verl's main_ppo, through the driver that keeps its TaskRunner (and the W&B key) on the head.
    assert argv[:3] == ["python", "-m", VERL_DRIVER]
    return argv[3:]


def test_render_prints_a_verl_command_that_composes_in_verls_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "-f", str(write_manifest(tmp_path, MANIFEST))]) == EXIT_OK
    config = compose_verl_config(rendered_overrides(capsys))
    assert config.actor_rollout_ref.model.path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert config.trainer.checkpoint_callback_class == "loka_trainer.verl_callback.S3CheckpointCallback"
    assert config.reward.custom_reward_function.path == "pkg://loka_trainer.rewards.gsm8k"
    assert config.trainer.experiment_name == "qwen-gsm8k"
    assert "file" in config.trainer.logger
    assert config.actor_rollout_ref.rollout.gpu_memory_utilization == 0.6


def test_render_of_an_invalid_manifest_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {**MANIFEST, "spec": {**MANIFEST["spec"], "training": {"batchSize": 0}}}
    assert main(["render", "-f", str(write_manifest(tmp_path, body))]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "spec.training.batchSize" in err
    assert "got 0" in err


def test_render_of_something_that_is_not_a_training_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "-f", str(write_manifest(tmp_path, {"kind": "Pod"}))]) == EXIT_BAD_INPUT
    assert "expected a TrainingRun manifest (kind: TrainingRun), found no TrainingRun" in capsys.readouterr().err


def test_explicit_resume_renders_verl_resume_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = dict(MANIFEST["spec"])
    spec["checkpoints"] = {**spec["checkpoints"], "resume": "s3://ckpt/loka/old/global_step_40"}
    assert main(["render", "-f", str(write_manifest(tmp_path, {**MANIFEST, "spec": spec}))]) == EXIT_OK
    config = compose_verl_config(rendered_overrides(capsys))
    assert config.trainer.resume_mode == "resume_path"
    assert config.trainer.resume_from_path.endswith("/global_step_40")


def test_launched_command_hands_the_checkpoint_settings_to_verls_actors_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-key")
    spec = TrainingRunSpec.model_validate(MANIFEST["spec"])
    store = CheckpointStore(
        ObjectStore(endpoint_url="http://127.0.0.1:9"),
        S3Uri("ckpt", "loka/qwen-gsm8k/7f1e"),
        keep=3,
        writer=Writer(2, "qwen-gsm8k-x7k2p"),
        run_uid="7f1e",
    )
    job = EngineJob(
        spec=spec,
        run_name="qwen-gsm8k",
        namespace="loka",
        inputs=StagedInputs("Qwen/Qwen2.5-1.5B-Instruct", tmp_path / "train.parquet", tmp_path / "val.parquet"),
        work_dir=tmp_path,
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
        checkpoints=store,
        resume=ResumePoint(100, tmp_path / "checkpoints" / "global_step_100", explicit=False),
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode="online",
    )
    argv = command(job)
    # Every variable the trainer gives verl's actors is one the recipes own (verlOverrides may not change it).
    assert set(actor_environment(job, {"KUBECONFIG": "/kube/config"})) <= set(LOKA_RUNTIME_ENV)
    assert not any("secret-key" in arg for arg in argv)
    assert argv[-1] == "actor_rollout_ref.rollout.gpu_memory_utilization=0.6"  # the user's overrides stay last
    config = compose_verl_config(argv[3:])
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.LOKA_CHECKPOINT_PREFIX == "s3://ckpt/loka/qwen-gsm8k/7f1e"
    assert env_vars.LOKA_CHECKPOINT_KEEP == "3"
    # verl's callback (maybe on a node without API access) learns the run and the attempt it writes for.
    assert env_vars.LOKA_CHECKPOINT_WRITER == "2/qwen-gsm8k-x7k2p"
    assert env_vars.LOKA_RUN_UID == "7f1e"
    assert env_vars.WANDB_MODE == "online"
    assert str(tmp_path / "metrics.jsonl") == env_vars.VERL_FILE_LOGGER_PATH
    assert config.trainer.default_local_dir == str(tmp_path / "checkpoints")
    assert config.trainer.resume_mode == "auto"


def test_checkpoint_callback_class_is_a_verl_checkpoint_callback() -> None:
    from verl.trainer.ppo.checkpoint_callback import CheckpointCallback
    from verl.utils.import_utils import load_class_from_fqn

    from loka_api.render import DEFAULT_CHECKPOINT_CALLBACK

    assert issubclass(load_class_from_fqn(DEFAULT_CHECKPOINT_CALLBACK, "CheckpointCallback"), CheckpointCallback)


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example_runs(engine: str | None = None, algorithm: str | None = None) -> list[tuple[Path, str]]:
    """(file, run name) of every TrainingRun in examples/ (pipelines hold several), by engine and algorithm."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "TrainingRun":
                continue
            spec = document.get("spec", {})
            if engine not in (None, spec.get("engine", "verl")):
                continue
            is_sft = spec.get("algorithm") == "sft"
            if algorithm is None or (algorithm == "sft") == is_sft:
                found.append((path, document["metadata"]["name"]))
    return found


def example_id(example: object) -> str:
    if isinstance(example, tuple):
        return f"{example[0].relative_to(EXAMPLES)}:{example[1]}"
    return str(example)


@pytest.mark.parametrize("example", example_runs(), ids=example_id)
def test_every_example_run_is_a_valid_training_run(example: tuple[Path, str]) -> None:
    from loka_trainer.runner import load_manifest

    path, name = example
    assert load_manifest(path, name=name).metadata.name == name


@pytest.mark.parametrize("source", ["test-manifest", *example_runs("verl", "rl")], ids=example_id)
def test_rendered_verl_config_passes_verls_own_validation(
    source: str | tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What verl.trainer.main_ppo checks before it starts Ray (batch divisibility, micro-batches, rollout)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    if isinstance(source, str):
        args = ["render", "-f", str(write_manifest(tmp_path, MANIFEST))]
    else:
        args = ["render", "-f", str(source[0]), "--name", source[1]]
    assert main(args) == EXIT_OK
    config = compose_verl_config(rendered_overrides(capsys))
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert need_reference_policy(config)  # KL loss is on: verl builds the reference model
    assert not need_critic(config)  # GRPO needs no critic


def test_render_picks_the_training_run_out_of_a_multi_document_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, MANIFEST]))
    assert main(["render", "-f", str(path)]) == EXIT_OK
    assert compose_verl_config(rendered_overrides(capsys)).trainer.experiment_name == "qwen-gsm8k"


@pytest.mark.parametrize("example", example_runs("verl", "sft"), ids=example_id)
def test_rendered_verl_sft_config_composes_and_builds_verls_config_objects(
    example: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """verl's SFT trainer: the config its Hydra main composes, then the dataclasses it builds first."""
    from verl.utils.config import omega_conf_to_dataclass

    path, name = example
    assert main(["render", "-f", str(path), "--name", name]) == EXIT_OK
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[:3] == ["python", "-m", "loka_trainer.verl_sft"]
    config = compose_verl_config(argv[3:], config_name="sft_trainer_engine")
    for section in (config.engine, config.optim, config.checkpoint):
        omega_conf_to_dataclass(section)
    assert config.trainer.experiment_name == name


def test_render_asks_which_run_when_a_file_holds_a_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "pipeline" / "sft-then-grpo-gpu.yaml"
    assert main(["render", "-f", str(path)]) == EXIT_BAD_INPUT
    assert "2 TrainingRuns (toy-sft, toy-grpo): pick one with --name" in capsys.readouterr().err
    assert main(["render", "-f", str(path), "--name", "nope"]) == EXIT_BAD_INPUT
    assert "no TrainingRun named 'nope' (found: toy-sft, toy-grpo)" in capsys.readouterr().err
