"""Supervised fine-tuning on demonstrations: verl's single-controller SFT trainer (``verl.trainer.sft_trainer_ray``,
config ``sft_trainer_engine``) through the trainer image's wrapper, which adds the S3 upload of each checkpoint; on
CPU, TRL's SFTTrainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from loka_api.recipes.base import (
    DataFormat,
    OwnedKey,
    Recipe,
    SpecRule,
    StagedPaths,
    hydra_value,
    owned_trainer_keys,
    resume_overrides,
    tracking_overrides,
    validation_every,
)

if TYPE_CHECKING:
    from loka_api.models import TrainingRunSpec

# verl's SFT on the run's Ray cluster (sft_trainer_ray), wrapped by the trainer image to upload checkpoints.
ENTRYPOINT = "loka_trainer.verl_sft"
CONFIG_NAME = "sft_trainer_engine"
# The column of conversations in the SFT parquet the trainer stages from promptKey/responseKey.
MESSAGES_COLUMN = "messages"


class SftRecipe(Recipe):
    name = "sft"
    algorithms = ("sft",)
    summary = "sft (fine-tuning)"
    rules = (
        SpecRule(
            "has(self.data.responseKey) || has(self.data.messagesKey)",
            "algorithm sft trains on demonstrations: set data.responseKey (the response to data.promptKey's "
            "prompt) or data.messagesKey (whole conversations)",
            ".data",
        ),
        SpecRule(
            "!has(self.reward)",
            "algorithm sft uses no reward: remove spec.reward (validation reports the loss on data.validation)",
            ".reward",
        ),
        SpecRule(
            "!has(self.environment)",
            "algorithm sft trains on demonstrations: spec.environment applies to reinforcement learning "
            "(train tool use with sft on transcripts in data.messagesKey, then grpo with an environment)",
            ".environment",
        ),
    )
    data_fields = ("responseKey", "messagesKey", "maxLength")
    data_fields_message = (
        "data.responseKey, data.messagesKey and data.maxLength apply to algorithm sft only "
        "(reinforcement learning generates its responses)"
    )
    sequences_per_item = "1"

    entrypoint = ENTRYPOINT
    config_name = CONFIG_NAME
    # The SFT driver is the trainer's own subprocess: it reads the runtime environment from its environment.
    runtime_env_through_hydra = False
    owned_keys: ClassVar[tuple[OwnedKey, ...]] = (
        *owned_trainer_keys(model_path="model.path", local_keep="trainer.max_ckpt_to_keep"),
        OwnedKey(
            "data.messages_key",
            "set spec.data.messagesKey (or spec.data.responseKey) instead (Loka stages the conversations)",
        ),
    )

    data_format = DataFormat.CONVERSATIONS
    # verl writes the shards of each rank in the step folder, config and tokenizer in its huggingface/; TRL a
    # Hugging Face model in the step folder.
    model_folders = ("",)
    validates_before_training = False
    trl_trainer = "loka_trainer.engines.trl:build_sft"

    def overrides(self, spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
        """verl's SFT trainer: data, model, optimiser, placement, checkpoints, logging (sft_trainer_engine.yaml)."""
        training, data = spec.training, spec.data
        checkpoints = spec.checkpoints
        overrides = [
            f"data.train_files={hydra_value(paths.train_files)}",
            f"data.val_files={hydra_value(paths.val_files) if paths.val_files is not None else 'null'}",
            f"data.messages_key={hydra_value(data.messages_key or MESSAGES_COLUMN)}",
            f"data.max_length={max_length(spec)}",
            "data.truncation=error",
            f"data.train_batch_size={training.batch_size}",
            f"data.micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
            # microBatchSizePerGpu means what it says: no token-budget batching unless verlOverrides turn it on.
            "data.use_dynamic_bsz=false",
            f"model.path={hydra_value(paths.model)}",
            f"optim.lr={training.learning_rate}",
            f"trainer.nnodes={spec.resources.workers}",
            f"trainer.n_gpus_per_node={spec.resources.gpus_per_worker}",
            f"trainer.total_epochs={training.epochs}",
            f"trainer.test_freq={validation_every(spec, paths)}",
            f"trainer.default_local_dir={hydra_value(paths.checkpoint_dir)}",
        ]
        if checkpoints is None:
            overrides += ["trainer.save_freq=-1", "trainer.resume_mode=disable"]
        else:
            # As for RL: S3 keeps `keep` checkpoints, one local copy is enough to upload from.
            overrides += [f"trainer.save_freq={checkpoints.every}", "trainer.max_ckpt_to_keep=1"]
            overrides += resume_overrides(checkpoints.resume, paths)
        # The SFT driver that logs is the trainer's own subprocess: it reads VERL_FILE_LOGGER_PATH from its
        # environment.
        overrides += tracking_overrides(spec, run_name=run_name, namespace=namespace, paths=paths, through_ray=False)
        if training.max_steps is not None:
            overrides.append(f"trainer.total_training_steps={training.max_steps}")
        return overrides


def max_length(spec: TrainingRunSpec) -> int:
    """Tokens per training sequence: data.maxLength, else prompt plus response."""
    data = spec.data
    return data.max_length or data.max_prompt_length + data.max_response_length


def messages_column(spec: TrainingRunSpec) -> str:
    """The column of conversations the engines read: the user's messagesKey, or the one staging writes."""
    return spec.data.messages_key or MESSAGES_COLUMN


SFT = SftRecipe()
