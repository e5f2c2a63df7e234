"""Loka's hook in verl's training loop: every step's reward figures (verl logs a reward's extra keys only at
validation) and the rollouts kept (verl's own rollout dump lacks the reward's keys).

verl 0.9.1's V1 trainer builds a step's metrics in ``PPOTrainer._compute_metrics`` while the step's samples still sit
in TransferQueue (they are cleared after it). ``install()``, run in the TaskRunner actor before it picks its trainer
class, registers a subclass of the ``sync`` trainer under the same name (verl tests ``trainer_mode == "sync"`` in
many places, so a new name would change its behaviour). The subclass reads each sample's prompt, response, score and
``reward_extra_info`` and adds ``reward/*``, ``judge/*``, ``env/*`` (episodes in MCP environments) and
``perf/samples_per_min`` to the step's metrics, which verl's ``Tracking`` sends to W&B and to the file logger the
trainer follows; and it writes the kept rollouts.

Nothing here may fail a step: an error is logged once and the step goes on without Loka's figures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from loka_api import RolloutsSpec
from loka_api.contract import ENV_CHECKPOINT_PREFIX, ENV_ROLLOUTS, ENV_RUN_UID
from loka_trainer.agents.episode import environment_metrics, episode_of
from loka_trainer.reward_metrics import as_reward_row, reward_step_metrics
from loka_trainer.rollouts import RolloutRecorder, Trajectory, conversation
from loka_trainer.step_metrics import ROLLOUTS_STEP, SAMPLES_PER_MINUTE

log = logging.getLogger(__name__)

_FIELDS = ["raw_prompt", "responses", "extra_fields", "data_source", "reward_model", "rm_scores"]


def step_samples(
    keys: Sequence[str],
    *,
    prompts: Sequence[Any],
    responses: Sequence[str],
    extra_fields: Sequence[Mapping[str, Any] | None],
    data_sources: Sequence[Any],
    reward_models: Sequence[Mapping[str, Any] | None],
    scores: Sequence[float],
    padding: Sequence[bool],
) -> tuple[list[dict[str, float]], list[Trajectory]]:
    """One step's samples (TransferQueue keys ``<prompt uid>_<session>_<index>``) as reward rows and trajectories;
    padding rows are left out. A sample's row is its ``reward_extra_info`` with ``score`` the reward it trained on.
    """
    rows: list[dict[str, float]] = []
    trajectories: list[Trajectory] = []
    groups: dict[str, int] = {}
    for index, key in enumerate(keys):
        if padding[index]:
            continue
        extra = (extra_fields[index] or {}).get("reward_extra_info") or {}
        row = as_reward_row({**{k: v for k, v in extra.items() if k != "score"}, "score": float(scores[index])})
        rows.append(row)
        group = groups.setdefault(key.rsplit("_", 2)[0], len(groups))
        truth = (reward_models[index] or {}).get("ground_truth")
        trajectories.append(
            Trajectory(
                group=group,
                messages=conversation(_prompt(prompts[index]), responses[index]),
                score=row["score"],
                components={k: v for k, v in row.items() if k != "score"},
                data_source=str(data_sources[index] or ""),
                ground_truth="" if truth is None else str(truth),
            )
        )
    return rows, trajectories


def step_environment_metrics(
    extra_fields: Sequence[Mapping[str, Any] | None], padding: Sequence[bool]
) -> dict[str, float]:
    """``env/*`` over the step's episodes in MCP environments (the agent loop's ``loka_env`` records); padding rows
    (groups verl dropped) are left out. Empty for runs without an environment.
    """
    episodes = [episode_of(extra) for extra, padded in zip(extra_fields, padding, strict=True) if not padded]
    return environment_metrics(e for e in episodes if e is not None)


def _prompt(raw: Any) -> Any:
    if hasattr(raw, "tolist"):
        raw = raw.tolist()
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else [dict(m) for m in raw]


def recorder_from_env(store: Any = None) -> RolloutRecorder | None:
    spec, prefix = os.environ.get(ENV_ROLLOUTS), os.environ.get(ENV_CHECKPOINT_PREFIX)
    if not spec or not prefix:
        return None
    from loka_api.storage import ObjectStore

    return RolloutRecorder(
        RolloutsSpec.model_validate_json(spec),
        store or ObjectStore(),
        prefix,
        seed=os.environ.get(ENV_RUN_UID, prefix),
    )


def install() -> None:
    """Register Loka's ``sync`` trainer in this process (the TaskRunner actor)."""
    import transfer_queue as tq  # type: ignore[import-untyped]
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    class LokaTrainerSync(PPOTrainerSync):
        _loka_recorder: RolloutRecorder | None = None
        _loka_failed = False

        def _compute_metrics(self, batch: Any, metrics: Any, timing_raw: Any, global_steps: Any, epoch: Any) -> Any:
            result = super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
            try:
                self._loka_step(batch, metrics, timing_raw, int(global_steps))
            except Exception as error:
                if not self._loka_failed:
                    log.warning("Loka's step figures and rollouts are off: %s: %s", type(error).__name__, error)
                self._loka_failed = True
            return result

        def _loka_step(self, batch: Any, metrics: dict[str, Any], timing_raw: Mapping[str, float], step: int) -> None:
            if self._loka_recorder is None:
                self._loka_recorder = recorder_from_env()
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_FIELDS)
            # As verl's own rollout dump reads them (PPOTrainer._log_rollout_data).
            padded = data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id)
            responses = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in padded]
            scores = data["rm_scores"].sum(dim=1).tolist()
            count = len(batch.keys)

            def column(name: str) -> list[Any]:
                present = name in data.keys()  # noqa: SIM118 - a TensorDict's `in` is not its keys'
                return list(data[name].tolist()) if present else [None] * count

            rows, trajectories = step_samples(
                list(batch.keys),
                prompts=column("raw_prompt"),
                responses=responses,
                extra_fields=column("extra_fields"),
                data_sources=column("data_source"),
                reward_models=column("reward_model"),
                scores=scores,
                padding=[bool(tag.get("is_padding", False)) for tag in batch.tags],
            )
            metrics.update(reward_step_metrics(rows))
            padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
            metrics.update(step_environment_metrics(column("extra_fields"), padding))
            seconds = float(timing_raw.get("step", 0.0))
            if seconds > 0:
                metrics[SAMPLES_PER_MINUTE] = len(rows) * 60.0 / seconds
            recorder = self._loka_recorder
            if recorder is not None and recorder.record(step, trajectories) is not None:
                metrics[ROLLOUTS_STEP] = step

    trainer_base.TRAINER_REGISTRY["sync"] = LokaTrainerSync


def task_runner_with_hook(task_runner_class: Any) -> Any:
    """verl's TaskRunner actor class, installing Loka's hook before it runs (``run_ppo``'s ``task_runner_class``)."""
    import ray

    base = task_runner_class.__ray_actor_class__

    class LokaTaskRunner(base):  # type: ignore[misc, valid-type]
        def run(self, config: Any) -> Any:
            install()
            return super().run(config)

    return ray.remote(LokaTaskRunner)
