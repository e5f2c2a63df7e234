"""A run in words: the one line that changes when its phase, step, reward, loss or checkpoint does (``loka submit
--wait``, the demo, a notebook's log), and the held-out figures with the step they were measured at; an
Evaluation's line likewise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loka_api import Metrics, RunPhase, TrainingRunStatus
from loka_api.evaluation import EvaluationPhase, EvaluationStatus

BAR_WIDTH = 20


def progress_bar(step: int, total: int) -> str:
    done = int(BAR_WIDTH * min(step, total) / total) if total else 0
    return "[" + "#" * done + "." * (BAR_WIDTH - done) + "]"


def typed_status(status: TrainingRunStatus | Mapping[str, Any]) -> TrainingRunStatus:
    return status if isinstance(status, TrainingRunStatus) else TrainingRunStatus.model_validate(status)


def describe_line(status: TrainingRunStatus | Mapping[str, Any]) -> str:
    """One line that changes when the phase, step, reward, loss or checkpoint does."""
    status = typed_status(status)
    phase = status.phase or RunPhase.PENDING
    progress, metrics, checkpoint = status.progress, status.metrics or Metrics(), status.checkpoint
    parts = [f"{phase:<10}"]
    if progress is not None and progress.step is not None:
        total = progress.total_steps
        parts.append(f"step {progress.step}/{total}" if total else f"step {progress.step}")
        if total:
            parts.insert(1, progress_bar(progress.step, total))
    if metrics.reward_mean is not None:
        parts.append(f"reward {metrics.reward_mean:.3f}")
    if metrics.kl_loss is not None:
        parts.append(f"kl {metrics.kl_loss:.4f}")
    if metrics.loss is not None:
        parts.append(f"loss {metrics.loss:.3f}")
    if (validation := validation_text(metrics)) is not None:
        parts.append(validation)
    if checkpoint is not None and checkpoint.step is not None:
        parts.append(f"checkpoint step {checkpoint.step}")
    if phase not in (RunPhase.RUNNING, RunPhase.SUCCEEDED) and status.message:
        parts.append(f"— {status.message[:100]}")
    return "  ".join(parts)


def evaluation_line(status: EvaluationStatus) -> str:
    """One line that changes when an Evaluation's phase or figures do (samples judged, preference pairs)."""
    text = f"{status.phase or EvaluationPhase.PENDING}" + (f": {status.message}" if status.message else "")
    if status.samples_judged is not None:
        text += f" ({status.samples_judged} judged, {status.preferences or 0} pairs)"
    return text


def validation_text(metrics: Metrics | None) -> str | None:
    """The held-out split's figure and the step it was measured at: reward for RL, loss for SFT."""
    if metrics is None:
        return None
    step = metrics.validation_step
    at = "before training" if step == 0 else f"at step {step}"
    if metrics.validation_reward_mean is not None:
        return f"validation reward {metrics.validation_reward_mean:.3f} {at}"
    if metrics.validation_loss is not None:
        return f"validation loss {metrics.validation_loss:.3f} {at}"
    return None


def headline(status: TrainingRunStatus) -> float | None:
    """The figure a run is followed by: the reward for RL, the loss for SFT."""
    metrics = status.metrics or Metrics()
    return metrics.reward_mean if metrics.reward_mean is not None else metrics.loss
