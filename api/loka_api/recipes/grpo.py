"""Reinforcement learning with a verl advantage estimator that needs no critic (GRPO and its family): verl's
``main_ppo`` (config ``ppo_trainer``) through the trainer image's driver, which pins verl's TaskRunner to the head;
on CPU, TRL's GRPOTrainer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

from loka_api.environments import AGENT_LOOP_NAME
from loka_api.models import RewardComponent, default_agent_rubric
from loka_api.recipes.base import (
    DataFormat,
    OwnedKey,
    Recipe,
    SpecProblem,
    SpecRule,
    StagedPaths,
    hydra_value,
    owned_runtime_env_keys,
    owned_trainer_keys,
    resume_overrides,
    tracking_overrides,
    validation_every,
)
from loka_api.reward_models import with_served_endpoints

if TYPE_CHECKING:
    from loka_api.models import TrainingRunSpec

# verl's main_ppo, with its TaskRunner (trainer loop, W&B tracker, checkpoint callback) pinned to the head.
ENTRYPOINT = "loka_trainer.verl_driver"
CONFIG_NAME = "ppo_trainer"
# The trainer image's rubric: a reward summed from named, weighted components (reward.components).
REWARD_COMPOSE_FUNCTION = "loka_trainer.rewards.compose:compute_score"


class GrpoRecipe(Recipe):
    name = "grpo"
    algorithms = ("grpo", "rloo", "reinforce_plus_plus", "remax")
    summary = "grpo, rloo, reinforce_plus_plus, remax (verl advantage estimators)"
    rules = (
        SpecRule(
            "self.training.samplesPerPrompt >= 2",
            "grpo compares responses within a group: training.samplesPerPrompt must be at least 2",
            ".training.samplesPerPrompt",
            only=("grpo",),
        ),
    )
    sequences_per_item = "self.training.samplesPerPrompt"
    rollouts = True

    entrypoint = ENTRYPOINT
    config_name = CONFIG_NAME
    runtime_env_through_hydra = True
    owned_keys: ClassVar[tuple[OwnedKey, ...]] = (
        OwnedKey("algorithm.adv_estimator", "set spec.algorithm instead (it picks the recipe the run follows)"),
        *owned_trainer_keys(model_path="actor_rollout_ref.model.path", local_keep="trainer.max_actor_ckpt_to_keep"),
        OwnedKey(
            "trainer.checkpoint_callback_class",
            "Loka's callback uploads each checkpoint to spec.checkpoints.uri; it cannot be replaced",
        ),
        *owned_runtime_env_keys(),
    )

    data_format = DataFormat.PROMPTS
    # verl saves the actor's shards under actor/ (its Hugging Face config in actor/huggingface); TRL saves a
    # Hugging Face model in the step folder itself.
    model_folders = ("", "actor")
    validates_before_training = True
    trl_trainer = "loka_trainer.engines.trl:build_grpo"

    def check(self, spec: TrainingRunSpec) -> SpecProblem | None:
        training, resources = spec.training, spec.resources
        gpus = resources.workers * resources.gpus_per_worker
        mini = training.mini_batch_size or training.batch_size
        if spec.engine == "verl" and gpus > 0 and (mini * training.samples_per_prompt) % gpus != 0:
            return SpecProblem(
                "InvalidBatchShape",
                f"spec.training.miniBatchSize ({mini}) * samplesPerPrompt ({training.samples_per_prompt}) = "
                f"{mini * training.samples_per_prompt} trajectories cannot be split evenly over {gpus} GPUs "
                "(resources.workers * resources.gpusPerWorker); choose a multiple",
            )
        return None

    def overrides(self, spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
        training = spec.training
        resources = spec.resources
        data = spec.data
        use_kl_loss = training.kl_loss_coef > 0
        val_files = paths.val_files if paths.val_files is not None else paths.train_files
        has_validation = paths.val_files is not None
        overrides = [
            f"algorithm.adv_estimator={spec.algorithm}",
            "algorithm.use_kl_in_reward=false",
            f"data.train_files={hydra_value(paths.train_files)}",
            f"data.val_files={hydra_value(val_files)}",
            f"data.prompt_key={hydra_value(data.prompt_key)}",
            f"data.max_prompt_length={data.max_prompt_length}",
            f"data.max_response_length={data.max_response_length}",
            f"data.train_batch_size={training.batch_size}",
            "data.filter_overlong_prompts=true",
            "data.truncation=error",
            f"actor_rollout_ref.model.path={hydra_value(paths.model)}",
            f"actor_rollout_ref.actor.optim.lr={training.learning_rate}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={training.mini_batch_size or training.batch_size}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
            f"actor_rollout_ref.actor.use_kl_loss={hydra_value(use_kl_loss)}",
            f"actor_rollout_ref.actor.kl_loss_coef={training.kl_loss_coef}",
            "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
            f"actor_rollout_ref.actor.entropy_coeff={training.entropy_coef}",
            f"actor_rollout_ref.rollout.name={training.rollout_engine.value}",
            f"actor_rollout_ref.rollout.n={training.samples_per_prompt}",
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={training.tensor_parallel_size}",
            f"actor_rollout_ref.rollout.gpu_memory_utilization={training.gpu_memory_utilization}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
            f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={training.micro_batch_size_per_gpu}",
            *_reward_overrides(spec, run=run_name, namespace=namespace),
            *_environment_overrides(spec, paths),
            f"trainer.nnodes={resources.workers}",
            f"trainer.n_gpus_per_node={resources.gpus_per_worker}",
            f"trainer.total_epochs={training.epochs}",
            # Validation reward of the starting weights, then at every checkpoint.
            f"trainer.val_before_train={hydra_value(has_validation)}",
            f"trainer.test_freq={validation_every(spec, paths)}",
            *_checkpoint_overrides(spec, paths),
            *tracking_overrides(spec, run_name=run_name, namespace=namespace, paths=paths),
        ]
        if training.max_steps is not None:
            overrides.append(f"trainer.total_training_steps={training.max_steps}")
        return overrides


def reward_rubric(spec: TrainingRunSpec, *, run: str, namespace: str) -> list[RewardComponent] | None:
    """The run's rubric: reward.components (a reward model the operator serves for the run called at its Service's
    address), the default agent rubric for a run with an environment and no reward, or None (a reward function of
    its own).
    """
    if spec.reward is not None:
        components = spec.reward.components
        return None if components is None else with_served_endpoints(components, run=run, namespace=namespace)
    return default_agent_rubric() if spec.environment is not None else None


def rubric_json(components: list[RewardComponent]) -> str:
    """The rubric as the trainer's ``loka_trainer.rewards.compose`` reads it: a JSON list of components."""
    configs = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in components]
    return json.dumps(configs, separators=(",", ":"), sort_keys=True)


def _reward_overrides(spec: TrainingRunSpec, *, run: str, namespace: str) -> list[str]:
    rubric = reward_rubric(spec, run=run, namespace=namespace)
    if rubric is not None:
        module, function = REWARD_COMPOSE_FUNCTION.split(":")
        return [
            f"reward.custom_reward_function.path=pkg://{module}",
            f"reward.custom_reward_function.name={function}",
            f"+reward.custom_reward_function.reward_kwargs.rubric={hydra_value(rubric_json(rubric))}",
        ]
    if spec.reward is None or spec.reward.function is None:
        return []
    module, _, function = spec.reward.function.partition(":")
    return [
        f"reward.custom_reward_function.path=pkg://{module}",
        f"reward.custom_reward_function.name={function}",
    ]


def _environment_overrides(spec: TrainingRunSpec, paths: StagedPaths) -> list[str]:
    """verl's multi-turn keys and Loka's MCP agent loop, for a run with spec.environment."""
    environment = spec.environment
    if environment is None:
        return []
    if paths.agent_loop_config is None:
        msg = "spec.environment: the trainer did not provide its agent-loop registration (agent_loop_config)"
        raise ValueError(msg)
    prefix = "actor_rollout_ref.rollout."
    return [
        f"{prefix}multi_turn.enable=true",  # read only by verl's legacy paths; harmless, and says what runs
        f"{prefix}multi_turn.max_assistant_turns={environment.max_turns}",
        f"{prefix}multi_turn.max_parallel_calls={environment.max_parallel_calls}",
        f"{prefix}multi_turn.max_tool_response_length={environment.max_tool_response_chars}",
        f"{prefix}multi_turn.format={environment.tool_call_format.value}",
        f"{prefix}agent.default_agent_loop={AGENT_LOOP_NAME}",
        f"{prefix}agent.agent_loop_config_path={hydra_value(paths.agent_loop_config)}",
        "data.return_raw_chat=true",
    ]


def _checkpoint_overrides(spec: TrainingRunSpec, paths: StagedPaths) -> list[str]:
    out = [f"trainer.default_local_dir={hydra_value(paths.checkpoint_dir)}"]
    checkpoints = spec.checkpoints
    if checkpoints is None:
        return [*out, "trainer.save_freq=-1", "trainer.resume_mode=disable"]
    # S3 keeps `keep` checkpoints; locally one copy is enough to upload from (and the trainer drops older ones
    # on every node, where verl's own rotation reaches only rank 0's).
    out += [f"trainer.save_freq={checkpoints.every}", "trainer.max_actor_ckpt_to_keep=1"]
    out += resume_overrides(checkpoints.resume, paths)
    if paths.checkpoint_callback_class:
        out.append(f"trainer.checkpoint_callback_class={paths.checkpoint_callback_class}")
    return out


GRPO = GrpoRecipe()
