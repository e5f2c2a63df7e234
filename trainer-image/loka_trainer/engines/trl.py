"""The trl engine: TRL's GRPOTrainer in this process, on CPU when there is no GPU (the local demo and CI).

It reads the same RL parquet as verl, scores with the same ``compute_score`` reward, logs the same metric
names into the same JSONL file, and stores checkpoints in the same S3 layout.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loka_api import TrainingRunSpec
from loka_api.contract import ENV_WANDB_MODE
from loka_trainer import step_metrics as names
from loka_trainer.checkpoints import VERL_TRACKER_NAME, drop_older_local_checkpoints
from loka_trainer.engines import EngineJob
from loka_trainer.step_metrics import MetricsWriter
from loka_trainer.storage import TransferCancelledError

log = logging.getLogger(__name__)

DEFAULT_REWARD = "loka_trainer.rewards.gsm8k:compute_score"
ComputeScore = Callable[..., Any]


def load_reward(function: str) -> ComputeScore:
    module_name, _, attribute = function.partition(":")
    try:
        loaded: ComputeScore = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        msg = f"spec.reward.function: cannot import {function!r} ({error}); expected module.path:function"
        raise ValueError(msg) from error
    return loaded


def as_text(prompt: Any) -> str:
    """A chat prompt flattened for tokenizers without a chat template."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"


def trl_reward(compute_score: ComputeScore) -> Callable[..., list[float | None]]:
    """Adapt verl's per-sample ``compute_score`` to TRL's batched reward function."""

    def reward(
        completions: list[Any], ground_truth: list[str], data_source: list[str], **kwargs: Any
    ) -> list[float | None]:
        extra = kwargs.get("extra_info") or [None] * len(completions)
        scores: list[float | None] = []
        for completion, truth, source, info in zip(completions, ground_truth, data_source, extra, strict=False):
            text = completion if isinstance(completion, str) else completion[-1]["content"]
            result = compute_score(source, text, truth, info)
            scores.append(float(result["score"] if isinstance(result, dict) else result))
        return scores

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
    data[names.STEP] = step
    if "epoch" in logs:
        data[names.EPOCH] = math.floor(float(logs["epoch"]))
    return data


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
        import datasets
        import torch
        from transformers import AutoTokenizer, TrainerCallback
        from trl.trainer.grpo_config import GRPOConfig
        from trl.trainer.grpo_trainer import GRPOTrainer

        spec, training = job.spec, job.spec.training
        tokenizer = AutoTokenizer.from_pretrained(job.inputs.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        has_template = tokenizer.chat_template is not None
        prompt_key = spec.data.prompt_key

        def to_trl(row: dict[str, Any]) -> dict[str, Any]:
            prompt = row[prompt_key]
            return {
                "prompt": list(prompt) if has_template and not isinstance(prompt, str) else as_text(prompt),
                "ground_truth": str((row.get("reward_model") or {}).get("ground_truth") or ""),
                "data_source": str(row.get("data_source") or ""),
            }

        raw = datasets.Dataset.from_parquet(str(job.inputs.train_files))
        train = raw.map(to_trl, remove_columns=raw.column_names)
        reward = trl_reward(load_reward(spec.reward.function if spec.reward else DEFAULT_REWARD))
        every = spec.checkpoints.every if spec.checkpoints else None
        use_wandb = spec.tracking is not None and spec.tracking.wandb is not None and job.wandb_mode != "disabled"
        if use_wandb and spec.tracking and spec.tracking.wandb:
            os.environ.setdefault("WANDB_PROJECT", spec.tracking.wandb.project)
            os.environ[ENV_WANDB_MODE] = job.wandb_mode
            os.environ.setdefault("WANDB_DIR", str(job.work_dir))
        config = GRPOConfig(
            output_dir=str(job.checkpoint_dir),
            run_name=job.run_name,
            per_device_train_batch_size=training.batch_size * training.samples_per_prompt,
            gradient_accumulation_steps=1,
            num_generations=training.samples_per_prompt,
            max_completion_length=spec.data.max_response_length,
            learning_rate=training.learning_rate,
            beta=training.kl_loss_coef,
            num_train_epochs=training.epochs,
            max_steps=training.max_steps or -1,
            save_strategy="steps" if every else "no",
            save_steps=every or 500,
            save_total_limit=1,  # S3 keeps `keep`; one local copy is enough to upload from
            logging_steps=1,
            report_to=["wandb"] if use_wandb else [],
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            fp16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )

        writer = MetricsWriter(job.metrics_file)
        loka_job = job

        class LokaCallback(TrainerCallback):
            def __init__(self) -> None:
                self.tokens_seen = 0.0

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if loka_job.stop.is_set():
                    control.should_training_stop = True
                    control.should_save = False
                elif every and state.max_steps and state.global_step >= state.max_steps:
                    control.should_save = True  # like verl: always a checkpoint at the end
                return control

            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
            ) -> Any:
                if not logs or "reward" not in logs:
                    return control
                tokens = float(logs.get("num_tokens", self.tokens_seen))
                new_tokens, self.tokens_seen = tokens - self.tokens_seen, tokens
                data = verl_metrics(logs, step=state.global_step)
                if float(logs.get("step_time", 0.0)) > 0:
                    data[names.TOTAL_TOKENS] = new_tokens
                    data[names.TIME_PER_STEP] = float(logs["step_time"])
                writer.log(state.global_step, data)
                return control

            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if loka_job.checkpoints is not None and folder.is_dir():
                    try:
                        record = loka_job.checkpoints.upload(state.global_step, folder, cancel=loka_job.stop)
                    except TransferCancelledError:
                        log.warning("upload of step %d abandoned on stop; the marker was not moved", state.global_step)
                        control.should_training_stop = True
                        return control
                    loka_job.on_checkpoint(record)
                    drop_older_local_checkpoints(loka_job.checkpoint_dir, state.global_step)  # the restored one
                return control

        trainer = GRPOTrainer(
            model=job.inputs.model,
            reward_funcs=[reward],
            args=config,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=[LokaCallback()],
        )
        resume_from = None
        if job.resume is not None:
            resume_from = str(job.resume.folder)
            (job.checkpoint_dir / VERL_TRACKER_NAME).unlink(missing_ok=True)
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        finally:
            writer.close()
        return 0
