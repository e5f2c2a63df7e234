"""The one renderer of verl arguments: a TrainingRun spec -> Hydra overrides for verl's trainer.

- RL algorithms (grpo, rloo, ...) run `verl.trainer.main_ppo` (config `ppo_trainer`);
- `sft` runs verl's single-controller SFT trainer (`verl.trainer.sft_trainer_ray`, config
  `sft_trainer_engine`) through the trainer image's wrapper, which adds the S3 upload of each checkpoint.

The trainer runs what this renders; the operator composes the same overrides against verl's
packaged Hydra config (without importing verl, which pulls in torch) to reject unknown keys
before anything is launched. It lives in the core so that both sides run the same code.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loka_api.contract import step_folder
from loka_api.models import Algorithm, TrainingRunSpec

if TYPE_CHECKING:
    from omegaconf import DictConfig

VERL_ENTRYPOINT = "verl.trainer.main_ppo"
VERL_CONFIG_NAME = "ppo_trainer"
# verl's SFT on the run's Ray cluster (sft_trainer_ray), wrapped by the trainer image to upload checkpoints.
VERL_SFT_ENTRYPOINT = "loka_trainer.verl_sft"
VERL_SFT_CONFIG_NAME = "sft_trainer_engine"
# The column of conversations in the SFT parquet the trainer stages from promptKey/responseKey.
SFT_MESSAGES_COLUMN = "messages"
# verl's `file` logger writes its JSONL where this variable says.
VERL_FILE_LOGGER_ENV = "VERL_FILE_LOGGER_PATH"
# The trainer image's verl checkpoint callback (uploads each checkpoint to S3, then moves the marker).
DEFAULT_CHECKPOINT_CALLBACK = "loka_trainer.verl_callback.S3CheckpointCallback"
# verl resume modes, by TrainingRun `checkpoints.resume` value.
RESUME_AUTO = "auto"
RESUME_NEVER = "never"


@dataclass(frozen=True)
class StagedPaths:
    """Where the trainer staged the run's inputs on local disk before launching verl."""

    model: str  # a local directory, or a Hugging Face id when the model is not staged
    train_files: Path
    checkpoint_dir: Path
    val_files: Path | None = None
    # The local global_step_N folder of `resume: s3://.../global_step_N`, while it seeds the run (None once the run
    # has a checkpoint of its own: verl's auto mode then finds that one).
    resume_from: Path | None = None
    metrics_file: Path | None = None  # verl's `file` logger writes JSONL here (VERL_FILE_LOGGER_PATH)
    checkpoint_callback_class: str | None = DEFAULT_CHECKPOINT_CALLBACK

    @classmethod
    def placeholder(cls) -> StagedPaths:
        """Stand-in paths for validation: composition only checks keys, not where files are."""
        root = Path("/loka")
        return cls(
            model=str(root / "model"),
            train_files=root / "data" / "train.parquet",
            val_files=root / "data" / "validation.parquet",
            checkpoint_dir=root / "checkpoints",
            resume_from=root / "checkpoints" / step_folder(1),
            metrics_file=root / "metrics.jsonl",
        )


def _hydra_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    text = str(value)
    # Quote strings Hydra's grammar would otherwise split or reinterpret (e.g. `:`, `=`, spaces, commas).
    if re.fullmatch(r"[A-Za-z0-9_./\-+@]*", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _reward_overrides(spec: TrainingRunSpec) -> list[str]:
    if spec.reward is None:
        return []
    module, _, function = spec.reward.function.partition(":")
    return [
        f"reward.custom_reward_function.path=pkg://{module}",
        f"reward.custom_reward_function.name={function}",
    ]


def _checkpoint_overrides(spec: TrainingRunSpec, paths: StagedPaths) -> list[str]:
    out = [f"trainer.default_local_dir={_hydra_value(paths.checkpoint_dir)}"]
    checkpoints = spec.checkpoints
    if checkpoints is None:
        return [*out, "trainer.save_freq=-1", "trainer.resume_mode=disable"]
    # S3 keeps `keep` checkpoints; locally one copy is enough to upload from (and the trainer drops older ones
    # on every node, where verl's own rotation reaches only rank 0's).
    out += [f"trainer.save_freq={checkpoints.every}", "trainer.max_actor_ckpt_to_keep=1"]
    out += _resume_overrides(checkpoints.resume, paths)
    if paths.checkpoint_callback_class:
        out.append(f"trainer.checkpoint_callback_class={paths.checkpoint_callback_class}")
    return out


def _tracking_overrides(
    spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths, through_ray: bool = True
) -> list[str]:
    wandb = spec.tracking.wandb if spec.tracking else None
    loggers = ["console"]
    if paths.metrics_file is not None:
        loggers.append("file")
    if wandb is not None and wandb.mode != "disabled":
        loggers.append("wandb")
    project = wandb.project if wandb is not None else f"loka-{namespace}"
    out = [
        f"trainer.project_name={_hydra_value(project)}",
        f"trainer.experiment_name={_hydra_value(run_name)}",
        f"trainer.logger={_hydra_value(loggers)}",
    ]
    if paths.metrics_file is not None and through_ray:
        # The TaskRunner actor that writes the file can land on any node; pass the path through Ray.
        out.append(
            f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={_hydra_value(paths.metrics_file)}"
        )
    return out


def verl_config_name(spec: TrainingRunSpec) -> str:
    """The verl Hydra config the run's overrides compose against."""
    return VERL_SFT_CONFIG_NAME if spec.algorithm is Algorithm.SFT else VERL_CONFIG_NAME


def verl_entrypoint(spec: TrainingRunSpec) -> str:
    """The Python module the trainer runs with the rendered overrides."""
    return VERL_SFT_ENTRYPOINT if spec.algorithm is Algorithm.SFT else VERL_ENTRYPOINT


def render_verl_overrides(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    """Hydra `key=value` overrides for the run's verl trainer; the spec's verlOverrides come last and win."""
    if spec.algorithm is Algorithm.SFT:
        return _render_sft(spec, run_name=run_name, namespace=namespace, paths=paths)
    return _render_rl(spec, run_name=run_name, namespace=namespace, paths=paths)


def _validation_every(spec: TrainingRunSpec, paths: StagedPaths) -> int:
    """Validate at every checkpoint when there is a validation set (-1: never)."""
    return spec.checkpoints.every if paths.val_files is not None and spec.checkpoints else -1


def _render_sft(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    """verl's SFT trainer: data, model, optimiser, placement, checkpoints, logging (sft_trainer_engine.yaml)."""
    training, data = spec.training, spec.data
    checkpoints = spec.checkpoints
    overrides = [
        f"data.train_files={_hydra_value(paths.train_files)}",
        f"data.val_files={_hydra_value(paths.val_files) if paths.val_files is not None else 'null'}",
        f"data.messages_key={_hydra_value(data.messages_key or SFT_MESSAGES_COLUMN)}",
        f"data.max_length={data.sft_max_length}",
        "data.truncation=error",
        f"data.train_batch_size={training.batch_size}",
        f"data.micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
        # microBatchSizePerGpu means what it says: no token-budget batching unless verlOverrides turn it on.
        "data.use_dynamic_bsz=false",
        f"model.path={_hydra_value(paths.model)}",
        f"optim.lr={training.learning_rate}",
        f"trainer.nnodes={spec.resources.workers}",
        f"trainer.n_gpus_per_node={spec.resources.gpus_per_worker}",
        f"trainer.total_epochs={training.epochs}",
        f"trainer.test_freq={_validation_every(spec, paths)}",
        f"trainer.default_local_dir={_hydra_value(paths.checkpoint_dir)}",
    ]
    if checkpoints is None:
        overrides += ["trainer.save_freq=-1", "trainer.resume_mode=disable"]
    else:
        # As for RL: S3 keeps `keep` checkpoints, one local copy is enough to upload from.
        overrides += [f"trainer.save_freq={checkpoints.every}", "trainer.max_ckpt_to_keep=1"]
        overrides += _resume_overrides(checkpoints.resume, paths)
    # The SFT driver that logs is the trainer's own subprocess: it reads VERL_FILE_LOGGER_ENV from its environment.
    overrides += _tracking_overrides(spec, run_name=run_name, namespace=namespace, paths=paths, through_ray=False)
    if training.max_steps is not None:
        overrides.append(f"trainer.total_training_steps={training.max_steps}")
    return [*overrides, *spec.verl_overrides]


def _resume_overrides(resume: str, paths: StagedPaths) -> list[str]:
    if resume == RESUME_NEVER:
        return ["trainer.resume_mode=disable"]
    if resume == RESUME_AUTO or paths.resume_from is None:
        # The trainer restores the run's latest verified checkpoint into checkpoint_dir; verl's auto finds it there.
        return ["trainer.resume_mode=auto"]
    # `checkpoints.resume: s3://…` seeds a run only while it has no checkpoint of its own.
    return ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={_hydra_value(paths.resume_from)}"]


def _render_rl(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    training = spec.training
    resources = spec.resources
    data = spec.data
    use_kl_loss = training.kl_loss_coef > 0
    val_files = paths.val_files if paths.val_files is not None else paths.train_files
    has_validation = paths.val_files is not None
    overrides = [
        f"algorithm.adv_estimator={spec.algorithm.value}",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={_hydra_value(paths.train_files)}",
        f"data.val_files={_hydra_value(val_files)}",
        f"data.prompt_key={_hydra_value(data.prompt_key)}",
        f"data.max_prompt_length={data.max_prompt_length}",
        f"data.max_response_length={data.max_response_length}",
        f"data.train_batch_size={training.batch_size}",
        "data.filter_overlong_prompts=true",
        "data.truncation=error",
        f"actor_rollout_ref.model.path={_hydra_value(paths.model)}",
        f"actor_rollout_ref.actor.optim.lr={training.learning_rate}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={training.mini_batch_size or training.batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.actor.use_kl_loss={_hydra_value(use_kl_loss)}",
        f"actor_rollout_ref.actor.kl_loss_coef={training.kl_loss_coef}",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        f"actor_rollout_ref.actor.entropy_coeff={training.entropy_coef}",
        f"actor_rollout_ref.rollout.name={training.rollout_engine.value}",
        f"actor_rollout_ref.rollout.n={training.samples_per_prompt}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={training.tensor_parallel_size}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={training.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
        *_reward_overrides(spec),
        f"trainer.nnodes={resources.workers}",
        f"trainer.n_gpus_per_node={resources.gpus_per_worker}",
        f"trainer.total_epochs={training.epochs}",
        # Validation reward of the starting weights, then at every checkpoint.
        f"trainer.val_before_train={_hydra_value(has_validation)}",
        f"trainer.test_freq={_validation_every(spec, paths)}",
        *_checkpoint_overrides(spec, paths),
        *_tracking_overrides(spec, run_name=run_name, namespace=namespace, paths=paths),
    ]
    if training.max_steps is not None:
        overrides.append(f"trainer.total_training_steps={training.max_steps}")
    return [*overrides, *spec.verl_overrides]


def verl_command(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    """The process the trainer runs on the Ray head: the run's verl entry point with the rendered overrides."""
    overrides = render_verl_overrides(spec, run_name=run_name, namespace=namespace, paths=paths)
    return [sys.executable, "-m", verl_entrypoint(spec), *overrides]


# ------------------------------------------------------------------------------------- composition


class VerlConfigError(ValueError):
    """An override does not fit verl's Hydra config. `key` names the offending config key when known."""

    def __init__(self, message: str, *, key: str | None = None, override: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.override = override


class VerlNotInstalledError(RuntimeError):
    """verl's packaged config is not available (install `verl==0.9.1 --no-deps`)."""


def verl_config_dir() -> Path:
    """verl/trainer/config inside the installed wheel, found without importing verl (it imports torch)."""
    spec = importlib.util.find_spec("verl")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "trainer" / "config"
        if (candidate / f"{VERL_CONFIG_NAME}.yaml").is_file():
            return candidate
    raise VerlNotInstalledError(
        "verl's packaged Hydra config (verl/trainer/config/ppo_trainer.yaml) was not found; "
        "install it with `pip install --no-deps verl==0.9.1`"
    )


# Hydra's GlobalHydra is process-wide state: one composition at a time.
_compose_lock = threading.Lock()

_OVERRIDE_KEY = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[^=@]+?)(@[^=]*)?=(?P<value>.*)$", re.S)


def _override_key(override: str) -> str:
    match = _OVERRIDE_KEY.match(override)
    return match.group("key").strip() if match else override.lstrip("+~").strip()


def _last_with_key(overrides: Sequence[str], key: str | None) -> str | None:
    # The last override of a key wins in Hydra, and the user's verlOverrides come last.
    return next((o for o in reversed(overrides) if _override_key(o) == key), None)


def _explain(error: Exception, overrides: Sequence[str], config_name: str) -> VerlConfigError:
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    quoted = re.search(r"'([^']+)'", text)
    key = quoted.group(1) if quoted else None
    override = _last_with_key(overrides, key) or key
    if "Could not override" in text or "not in struct" in text:
        message = (
            f"unknown verl config key {key!r} (in {override!r}): it is not in verl's {config_name} config; "
            f"check the spelling, or add a new key with '+{key}=...'"
        )
    elif "Could not append" in text:
        message = f"verl config key {key!r} already exists (in {override!r}); drop the leading '+' to override it"
    elif "Could not delete" in text:
        message = f"cannot delete verl config key {key!r} (in {override!r}): it is not in verl's {config_name} config"
    else:
        message = f"invalid verl override {override!r}: {first_line}"
    return VerlConfigError(message, key=key, override=override)


def _parse_each(overrides: Sequence[str]) -> None:
    """Name the override Hydra cannot parse (its own message does not say which one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as error:
            reason = str(error).strip().splitlines()[0]
            raise VerlConfigError(
                f"cannot parse verl override {override!r}: {reason} (expected key=value in Hydra override syntax)",
                key=_override_key(override),
                override=override,
            ) from None


@functools.lru_cache(maxsize=256)
def _compose_cached(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _parse_each(overrides)
    config_dir = verl_config_dir()
    with _compose_lock, initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            return compose(config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as error:
            raise _explain(error, overrides, config_name) from None


def _select(config: DictConfig, key: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.select(config, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation that cannot resolve offline
        return None


def _check_types(config: DictConfig, overrides: Sequence[str], config_name: str) -> None:
    """Catch what composition lets through: a number or boolean key given a word (e.g. `rollout.n=abc`)."""
    defaults = _compose_cached(config_name, ())
    winners = {_override_key(o): o for o in overrides}
    for key, override in winners.items():
        match = _OVERRIDE_KEY.match(override)
        if not match or match.group("prefix"):
            continue
        default = _select(defaults, key)
        value = _select(config, key)
        if default is None or value is None or isinstance(value, type(default)):
            continue
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        raise VerlConfigError(
            f"verl config key {key!r} expects a {type(default).__name__} (default {default!r}), "
            f"got {value!r} (in {override!r})",
            key=key,
            override=override,
        )


def compose_verl_config(overrides: Sequence[str], *, config_name: str = VERL_CONFIG_NAME) -> DictConfig:
    """Compose overrides against one of verl's packaged configs (ppo_trainer by default, sft_trainer_engine for
    SFT); raise VerlConfigError naming a bad key.
    """
    config = _compose_cached(config_name, tuple(overrides))
    _check_types(config, overrides, config_name)
    return config
