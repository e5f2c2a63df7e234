"""The trl engine: the trainer the run's recipe names (``Recipe.trl_trainer``: TRL's GRPOTrainer for RL, its
SFTTrainer for sft, its RewardTrainer for rm) in this process, on CPU when there is no GPU (the local demo and CI).

It reads the same parquet as verl (RL prompts; SFT conversations as the trainer staged them), scores with the same
``compute_score`` reward, logs the same metric names into the same JSONL file (validation included), and stores
checkpoints in the same S3 layout.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from loka_api import TrainingRunSpec
from loka_api.contract import ENV_WANDB_MODE
from loka_api.environments import ENV_SYSTEM_PROMPT
from loka_api.recipes import Recipe, recipe_for
from loka_api.recipes.grpo import reward_rubric, rubric_json
from loka_api.recipes.sft import max_length, messages_column
from loka_api.storage import TransferCancelledError
from loka_trainer import step_metrics as names
from loka_trainer.agents.environment import AgentSettings
from loka_trainer.agents.episode import EPISODE_KEY, EpisodeStats, environment_metrics
from loka_trainer.agents.trl_loop import mcp_rollout_func
from loka_trainer.agents.trl_loop import prompt_key as agent_prompt_key
from loka_trainer.checkpoints import VERL_TRACKER_NAME, drop_older_local_checkpoints
from loka_trainer.engines import EngineJob
from loka_trainer.preferences import load_pairs
from loka_trainer.reward_metrics import as_reward_row, reward_step_metrics
from loka_trainer.rewards import compose
from loka_trainer.rollouts import ROLLOUTS_STEP, RolloutRecorder, Trajectory, conversation, recorder_for
from loka_trainer.sft_data import read_conversations
from loka_trainer.step_metrics import MetricsWriter

log = logging.getLogger(__name__)

DEFAULT_REWARD = "loka_trainer.rewards.gsm8k:compute_score"
ComputeScore = Callable[..., Any]
ToVerl = Callable[..., dict[str, float]]
# A recipe's trainer: built from the job, writing its metrics through the writer; TRL's Trainer interface
# (train(resume_from_checkpoint=...), evaluate(), eval_dataset).
TrainerBuilder = Callable[[EngineJob, MetricsWriter], Any]


def trainer_builder(recipe: Recipe) -> TrainerBuilder:
    """The recipe's ``trl_trainer`` (``module:function``), imported."""
    if recipe.trl_trainer is None:
        msg = f"spec.engine: algorithm(s) {', '.join(recipe.algorithms)} have no trl trainer (use engine verl)"
        raise ValueError(msg)
    module_name, _, attribute = recipe.trl_trainer.partition(":")
    builder: TrainerBuilder = getattr(importlib.import_module(module_name), attribute)
    return builder


def load_tokenizer(job: EngineJob) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.inputs.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward(function: str) -> ComputeScore:
    module_name, _, attribute = function.partition(":")
    try:
        loaded: ComputeScore = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        msg = f"spec.reward.function: cannot import {function!r} ({error}); expected module.path:function"
        raise ValueError(msg) from error
    return loaded


def run_reward(spec: TrainingRunSpec, *, run: str, namespace: str) -> ComputeScore:
    """The run's ``compute_score``: its rubric (reward.components, or the default agent rubric for a run with an
    environment), or its own function.
    """
    rubric = reward_rubric(spec, run=run, namespace=namespace)
    if rubric is not None:
        return functools.partial(compose.compute_score, rubric=rubric_json(rubric))
    function = spec.reward.function if spec.reward is not None else None
    return load_reward(function or DEFAULT_REWARD)


def as_text(prompt: Any) -> str:
    """A chat prompt flattened for tokenizers without a chat template."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"


class StepTap:
    """What the reward saw during one training step (not during validation): its trajectories, for rollouts."""

    def __init__(self, samples_per_prompt: int) -> None:
        self.samples_per_prompt = samples_per_prompt
        self.training = False
        self.trajectories: list[Trajectory] = []

    def begin(self) -> None:
        self.training, self.trajectories = True, []

    def end(self) -> list[Trajectory]:
        self.training = False
        taken, self.trajectories = self.trajectories, []
        return taken


def trl_reward(
    compute_score: ComputeScore,
    *,
    samples_per_prompt: int = 1,
    tap: StepTap | None = None,
    reward_kwargs: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Adapt verl's per-sample ``compute_score`` (sync or async) to TRL's batched (async) reward function. Each batch's
    reward figures go to TRL's log (``log_metric``), its trajectories to ``tap`` while a training step runs.
    """
    is_async = inspect.iscoroutinefunction(compute_score)
    settings = reward_kwargs or {}

    async def reward(
        prompts: list[Any],
        completions: list[Any],
        ground_truth: list[str],
        data_source: list[str],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        # An agent run's rollout hands each completion's episode record (loka_env) to the reward.
        episodes = kwargs.get(EPISODE_KEY) or [None] * len(completions)

        async def score(prompt: Any, text: str, truth: str, source: str, episode: Any) -> dict[str, float]:
            info = {"prompt": prompt} if episode is None else {"prompt": prompt, EPISODE_KEY: episode}
            result = compute_score(source, text, truth, info, **settings)
            return as_reward_row(await result if is_async else result)

        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rows = await asyncio.gather(
            *(score(*sample) for sample in zip(prompts, texts, ground_truth, data_source, episodes, strict=False))
        )
        if log_metric is not None:
            figures = reward_step_metrics(rows)
            figures.update(environment_metrics(e for e in map(EpisodeStats.from_record, episodes) if e is not None))
            for name, value in figures.items():
                log_metric(name, value)
        if tap is not None and tap.training:
            base = len(tap.trajectories) // max(1, tap.samples_per_prompt)
            for index, (prompt, text, row, truth, source) in enumerate(
                zip(prompts, texts, rows, ground_truth, data_source, strict=False)
            ):
                components = {key: value for key, value in row.items() if key != "score"}
                tap.trajectories.append(
                    Trajectory(
                        group=base + index // max(1, tap.samples_per_prompt),
                        messages=conversation(prompt, text),
                        score=row["score"],
                        components=components,
                        data_source=source,
                        ground_truth=truth,
                    )
                )
        return [row["score"] for row in rows]

    reward.__name__ = getattr(compute_score, "__module__", "reward").rsplit(".", 1)[-1]
    return reward


def verl_metrics(logs: dict[str, float], *, step: int) -> dict[str, float]:
    """TRL's log keys under verl's metric names, so one follower reads both engines."""
    mapping = {
        "reward": names.REWARD_MEAN,
        "kl": names.KL_LOSS,
        "completions/mean_length": names.RESPONSE_LENGTH_MEAN,
        "loss": "actor/pg_loss",
        "entropy": "actor/entropy",
        "learning_rate": "actor/lr",
    }
    data: dict[str, float] = {verl: float(logs[trl]) for trl, verl in mapping.items() if trl in logs}
    data.update({key: float(value) for key, value in logs.items() if key.startswith(names.DOMAIN_PREFIXES)})
    data[names.STEP] = step
    if "epoch" in logs:
        data[names.EPOCH] = math.floor(float(logs["epoch"]))
    return data


def verl_sft_metrics(logs: dict[str, float], *, step: int) -> dict[str, float]:
    """SFTTrainer's log keys under the names verl's SFT trainer logs."""
    data = {names.SFT_LOSS: float(logs["loss"]), names.STEP: step}
    if "learning_rate" in logs:
        data["train/lr"] = float(logs["learning_rate"])
    if "epoch" in logs:
        data[names.EPOCH] = math.floor(float(logs["epoch"]))
    return data


def verl_rm_metrics(logs: dict[str, float], *, step: int) -> dict[str, float]:
    """RewardTrainer's step: its loss under SFT's name (what status shows as the loss), its accuracy and margin."""
    data = verl_sft_metrics(logs, step=step)
    for trl_name in ("accuracy", "margin"):
        if trl_name in logs:
            data[f"rm/train/{trl_name}"] = float(logs[trl_name])
    return data


def verl_validation_metrics(logs: dict[str, float], *, samples: int) -> dict[str, float]:
    """An evaluation's figures under verl's validation names (``val-core/<source>/reward/mean@N``, ``val/loss``)."""
    data: dict[str, float] = {}
    if "eval_reward" in logs:
        data[f"{names.VALIDATION_PREFIX}all/reward/mean@{samples}"] = float(logs["eval_reward"])
    if "eval_loss" in logs and "eval_reward" not in logs:
        data[names.SFT_VALIDATION_LOSS] = float(logs["eval_loss"])
    if "eval_accuracy" in logs:
        data[names.PAIRWISE_ACCURACY] = float(logs["eval_accuracy"])
    return data


def sft_example(messages: list[dict[str, str]], *, chat: bool) -> dict[str, Any]:
    """A conversation as TRL's prompt-completion example: the loss is on the final assistant turn only, as verl
    trains on assistant turns. Without a chat template the turns are flattened to text.
    """
    prompt, completion = messages[:-1], messages[-1]
    if chat:
        return {"prompt": prompt, "completion": [completion]}
    return {"prompt": as_text(prompt), "completion": " " + completion["content"]}


class TrlEngine:
    name = "trl"
    uses_ray = False

    def total_steps(self, spec: TrainingRunSpec, train_rows: int) -> int | None:
        if spec.training.max_steps is not None:
            return spec.training.max_steps
        return math.ceil(train_rows / spec.training.batch_size) * spec.training.epochs or None

    def local_checkpoint_ranks(self, spec: TrainingRunSpec) -> frozenset[int] | None:
        return None  # one process, the whole checkpoint

    def run(self, job: EngineJob) -> int:
        recipe = recipe_for(job.spec.algorithm)
        build = trainer_builder(recipe)
        writer = MetricsWriter(job.metrics_file)
        try:
            trainer = build(job, writer)
            resume_from = None
            if job.resume is not None:
                resume_from = str(job.resume.folder)
                (job.checkpoint_dir / VERL_TRACKER_NAME).unlink(missing_ok=True)
            elif trainer.eval_dataset is not None and recipe.validates_before_training:
                trainer.evaluate()  # verl's val_before_train: the starting weights' validation figure, at step 0
            trainer.train(resume_from_checkpoint=resume_from)
        finally:
            writer.close()
        return 0


def build_grpo(job: EngineJob, writer: MetricsWriter) -> Any:
    """TRL's GRPOTrainer on the run's prompts, scored by the run's reward function."""
    import datasets
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    tokenizer = load_tokenizer(job)

    spec, training = job.spec, job.spec.training
    has_template = tokenizer.chat_template is not None
    prompt_key = spec.data.prompt_key

    tasks: dict[str, dict[str, Any]] = {}

    def to_trl(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row[prompt_key]
        if spec.environment is not None and not isinstance(prompt, str):
            tasks[agent_prompt_key(prompt)] = dict(row.get("extra_info") or {})
        return {
            "prompt": list(prompt) if has_template and not isinstance(prompt, str) else as_text(prompt),
            "ground_truth": str((row.get("reward_model") or {}).get("ground_truth") or ""),
            "data_source": str(row.get("data_source") or ""),
        }

    def load(path: Path | None) -> Any:
        if path is None:
            return None
        raw = datasets.Dataset.from_parquet(str(path))
        return raw.map(to_trl, remove_columns=raw.column_names)

    tap = StepTap(training.samples_per_prompt)
    reward = trl_reward(
        run_reward(spec, run=job.run_name, namespace=job.namespace),
        samples_per_prompt=training.samples_per_prompt,
        tap=tap,
    )
    recorder = None
    if job.checkpoints is not None:
        recorder = recorder_for(
            spec.rollouts,
            job.checkpoints.store,
            str(job.checkpoints.prefix),
            seed=job.checkpoints.run_uid or job.run_name,
        )
    rollout = None
    if spec.environment is not None:
        settings = AgentSettings.from_spec(spec.environment, run=job.run_name, namespace=job.namespace)
        settings = replace(settings, system_prompt=os.environ.get(ENV_SYSTEM_PROMPT) or None)
        rollout = mcp_rollout_func(settings, tasks, max_completion_tokens=spec.data.max_response_length)
    batch = training.batch_size * training.samples_per_prompt
    config = GRPOConfig(
        **common_arguments(job, eval_batch=batch),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=training.samples_per_prompt,
        max_completion_length=spec.data.max_response_length,
        beta=training.kl_loss_coef,
    )
    return GRPOTrainer(
        model=job.inputs.model,
        reward_funcs=[reward],
        args=config,
        rollout_func=rollout,
        train_dataset=load(job.inputs.train_files),
        eval_dataset=load(job.inputs.val_files),
        processing_class=tokenizer,
        callbacks=[
            loka_callback(
                job, writer, to_verl=verl_metrics, samples=training.samples_per_prompt, tap=tap, recorder=recorder
            )
        ],
    )


def build_rm(job: EngineJob, writer: MetricsWriter) -> Any:
    """A reward model: TRL's RewardTrainer (Bradley-Terry on chosen/rejected) on the staged preference pairs; the
    checkpoint is a ``*ForSequenceClassification`` model. Pairwise accuracy on held-out pairs is validated at
    every checkpoint and at the end.
    """
    import datasets
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

    tokenizer = load_tokenizer(job)

    spec, training = job.spec, job.spec.training
    chat = tokenizer.chat_template is not None
    train_pairs = load_pairs(job.inputs.train_files)
    if job.inputs.val_files is not None:
        held_out = load_pairs(job.inputs.val_files)
    else:
        count = max(1, round(len(train_pairs) * RM_HELD_OUT_SHARE)) if len(train_pairs) > 1 else 0
        shuffled = random.Random(0).sample(train_pairs, len(train_pairs))
        held_out, train_pairs = shuffled[:count], shuffled[count:]
    every = spec.checkpoints.every if spec.checkpoints else None
    arguments = common_arguments(job, eval_batch=training.batch_size)
    arguments.update(eval_strategy="steps" if held_out and every else "no", eval_steps=every if held_out else None)
    config = RewardConfig(
        **arguments,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=1,
        max_length=max_length(spec),
        disable_dropout=True,
        dataset_num_proc=None,
    )
    return RewardTrainer(
        model=job.inputs.model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rm_examples(train_pairs, chat=chat)),
        eval_dataset=datasets.Dataset.from_list(rm_examples(held_out, chat=chat)) if held_out else None,
        processing_class=tokenizer,
        callbacks=[loka_callback(job, writer, to_verl=verl_rm_metrics, samples=1)],
    )


def build_sft(job: EngineJob, writer: MetricsWriter) -> Any:
    """TRL's SFTTrainer on the conversations staging wrote, the loss on the final assistant turn."""
    import datasets
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    tokenizer = load_tokenizer(job)

    spec, training = job.spec, job.spec.training
    column = messages_column(spec)
    chat = tokenizer.chat_template is not None

    def load(path: Path | None) -> Any:
        if path is None:
            return None
        rows = [sft_example(messages, chat=chat) for messages in read_conversations(path, column)]
        return datasets.Dataset.from_list(rows)

    config = SFTConfig(
        **common_arguments(job, eval_batch=training.batch_size),
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=1,
        max_length=max_length(spec),
        completion_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=job.inputs.model,
        args=config,
        train_dataset=load(job.inputs.train_files),
        eval_dataset=load(job.inputs.val_files),
        processing_class=tokenizer,
        callbacks=[loka_callback(job, writer, to_verl=verl_sft_metrics, samples=1)],
    )


# rm: the share of pairs held out for pairwise accuracy when the run names no data.validation.
RM_HELD_OUT_SHARE = 0.1


def rm_examples(pairs: list[dict[str, Any]], *, chat: bool) -> list[dict[str, Any]]:
    """Preference pairs as RewardTrainer's examples; without a chat template, as flattened text."""
    if chat:
        return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]

    def text(value: Any) -> str:
        return value if isinstance(value, str) else " ".join(m["content"] for m in value)

    return [
        {"prompt": as_text(p["prompt"]), "chosen": " " + text(p["chosen"]), "rejected": " " + text(p["rejected"])}
        for p in pairs
    ]


def common_arguments(job: EngineJob, *, eval_batch: int) -> dict[str, Any]:
    """TrainingArguments both trainers share: schedule, checkpoints, validation at every checkpoint, CPU."""
    import torch

    spec, training = job.spec, job.spec.training
    every = spec.checkpoints.every if spec.checkpoints else None
    validate = job.inputs.val_files is not None and every is not None
    use_wandb = spec.tracking is not None and spec.tracking.wandb is not None and job.wandb_mode != "disabled"
    if use_wandb and spec.tracking and spec.tracking.wandb:
        os.environ.setdefault("WANDB_PROJECT", spec.tracking.wandb.project)
        os.environ[ENV_WANDB_MODE] = job.wandb_mode
        os.environ.setdefault("WANDB_DIR", str(job.work_dir))
    return {
        "output_dir": str(job.checkpoint_dir),
        "run_name": job.run_name,
        "learning_rate": training.learning_rate,
        "num_train_epochs": training.epochs,
        "max_steps": training.max_steps or -1,
        "save_strategy": "steps" if every else "no",
        "save_steps": every or 500,
        "save_total_limit": 1,  # S3 keeps `keep`; one local copy is enough to upload from
        "eval_strategy": "steps" if validate else "no",
        "eval_steps": every if validate else None,
        "per_device_eval_batch_size": eval_batch,
        "logging_steps": 1,
        "report_to": ["wandb"] if use_wandb else [],
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "fp16": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }


def loka_callback(
    job: EngineJob,
    writer: MetricsWriter,
    *,
    to_verl: ToVerl,
    samples: int,
    tap: StepTap | None = None,
    recorder: RolloutRecorder | None = None,
) -> Any:
    """The TrainerCallback that stops on SIGTERM, writes each step's metrics (and each validation) in verl's
    format, keeps the step's rollouts, saves at the end like verl, and uploads each checkpoint (files, manifest, then
    marker).
    """
    from transformers import TrainerCallback

    every = job.spec.checkpoints.every if job.spec.checkpoints else None

    class LokaCallback(TrainerCallback):
        def __init__(self) -> None:
            self.tokens_seen = 0.0
            self.step_started = 0.0
            self.step_seconds = 0.0
            self.rollouts_step: int | None = None
            self.saved: int | None = None  # the last step uploaded and marked

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            # transformers computes the save, eval and logging intervals from this run's arguments, then replaces
            # its state with the checkpoint's trainer_state.json on resume: a run resumed from another run's
            # checkpoint (checkpoints.resume, a fromRun seed) would save and validate at *that* run's interval.
            state.compute_steps(args, state.max_steps)
            return control

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.step_started = time.monotonic()
            if tap is not None:
                tap.begin()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.step_seconds = time.monotonic() - self.step_started
            trajectories = tap.end() if tap is not None else []
            if recorder is not None and recorder.record(state.global_step, trajectories) is not None:
                self.rollouts_step = state.global_step
            if job.stop.is_set():
                control.should_training_stop = True
                # Save on the way out (a preemption, a suspension): the step just trained, unless it is saved.
                plan = job.save_on_stop
                saved_here = self.saved == state.global_step
                control.should_save = plan is not None and not plan.abandon.is_set() and not saved_here
                if plan is not None and saved_here and plan.saved_step is None:
                    plan.saved_step = state.global_step
            elif every and state.max_steps and state.global_step >= state.max_steps:
                control.should_save = True  # like verl: always a checkpoint at the end
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> Any:
            if not logs:
                return control
            validation = verl_validation_metrics(logs, samples=samples)
            if validation:
                writer.log(state.global_step, validation)
            elif "reward" in logs or "loss" in logs:
                data = to_verl(logs, step=state.global_step)
                tokens = float(logs.get("num_tokens", self.tokens_seen))
                new_tokens, self.tokens_seen = tokens - self.tokens_seen, tokens
                seconds = float(logs.get("step_time", 0.0)) or self.step_seconds
                if seconds > 0 and new_tokens > 0:
                    data[names.TOTAL_TOKENS] = new_tokens
                    data[names.TIME_PER_STEP] = seconds
                    data[names.SAMPLES_PER_MINUTE] = samples * job.spec.training.batch_size * 60 / seconds
                if self.rollouts_step is not None:
                    data[ROLLOUTS_STEP] = self.rollouts_step
                writer.log(state.global_step, data)
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if job.checkpoints is not None and folder.is_dir():
                plan = job.save_on_stop
                # A stop gives an upload the save window to finish (without one, it ends the upload at once).
                cancel = job.stop if plan is None else plan.abandon
                try:
                    record = job.checkpoints.upload(state.global_step, folder, cancel=cancel)
                except TransferCancelledError:
                    log.warning("upload of step %d abandoned on stop; the marker was not moved", state.global_step)
                    if plan is not None:
                        plan.failure = f"the upload of step {state.global_step} did not finish in {plan.window_s:.0f} s"
                    control.should_training_stop = True
                    return control
                self.saved = state.global_step
                if plan is not None and job.stop.is_set():
                    plan.saved_step = state.global_step
                job.on_checkpoint(record)
                drop_older_local_checkpoints(job.checkpoint_dir, state.global_step)  # the restored one
            return control

    return LokaCallback()
