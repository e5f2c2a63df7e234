"""Reporting progress, metrics and checkpoints into the run's status, rate-limited, never failing the training.

Once the API server refuses a patch because a newer attempt reports the run now (``StatusFencedError``, see
``run_client``), this attempt stops reporting: its words would only overwrite the newer attempt's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loka_api.checkpoints import CheckpointRecord
from loka_trainer.step_metrics import StepMetrics

log = logging.getLogger(__name__)

StatusPatcher = Callable[[dict[str, Any]], None]


class StatusFencedError(RuntimeError):
    """The run's status belongs to a newer attempt: the API server refused this attempt's patch."""


# The budget: at most about one metrics patch per 10 s; the last update is always sent (flush).
DEFAULT_MIN_INTERVAL_S = 10.0
# status.message is shown by kubectl and consoles; keep it short.
MAX_MESSAGE_CHARS = 1024


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    # In a merge patch None would delete the field; a missing metric should leave the last value shown.
    return {key: value for key, value in values.items() if value is not None}


def shown(value: float | None) -> float | None:
    """A metric as people read it in status (`kubectl get`, consoles): four significant digits. The metrics file
    and W&B keep the exact values."""
    return None if value is None else float(f"{value:.4g}")


def progress_patch(metrics: StepMetrics, total_steps: int | None) -> dict[str, Any]:
    patch: dict[str, Any] = {
        "progress": _without_none({"step": metrics.step, "totalSteps": total_steps, "epoch": metrics.epoch}),
        "metrics": _without_none(
            {
                "rewardMean": shown(metrics.reward_mean),
                "klLoss": shown(metrics.kl_loss),
                "loss": shown(metrics.loss),
                "responseLengthMean": shown(metrics.response_length_mean),
                "tokensPerSecond": shown(metrics.tokens_per_second),
                "validationRewardMean": shown(metrics.validation_reward_mean),
                "validationLoss": shown(metrics.validation_loss),
                "pairwiseAccuracy": shown(metrics.pairwise_accuracy),
                "validationStep": metrics.validation_step,
                "secondsPerStep": shown(metrics.seconds_per_step),
                "rewardComponents": {name: shown(value) for name, value in metrics.reward_components.items()}
                if metrics.reward_components
                else None,
                "updatedAt": _now(),
            }
        ),
    }
    if metrics.rollouts_step is not None:
        patch["rollouts"] = {"step": metrics.rollouts_step}
    return patch


class StatusReporter:
    """Sends metrics at most once per ``min_interval`` (keeping only the newest pending one), checkpoints and
    messages at once. A failed patch is logged and dropped: status is best effort, training is not.
    """

    def __init__(
        self,
        patcher: StatusPatcher,
        *,
        total_steps: int | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._patcher = patcher
        self.total_steps = total_steps
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: StepMetrics | None = None
        self._last_sent_at: float | None = None
        self._warned: set[str] = set()
        self._progress_sent = 0  # the highest progress.step patched so far
        self.patches_sent = 0
        self.fenced = False  # a newer attempt reports the run now: send nothing more

    def _send(self, patch: dict[str, Any]) -> bool:
        if self.fenced:
            return False
        step = (patch.get("progress") or {}).get("step")
        if step is not None and step < self._progress_sent:
            # The metrics file lags checkpoints: never move progress back behind what status already shows.
            patch = {key: value for key, value in patch.items() if key != "progress"}
        elif step is not None:
            self._progress_sent = step
        try:
            self._patcher(patch)
        except StatusFencedError as error:
            self.fenced = True
            log.warning("%s; this attempt stops reporting", error)
            return False
        except Exception as error:
            reason = f"{type(error).__name__}: {getattr(error, 'status', '')} {getattr(error, 'reason', '')}".strip()
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("could not patch the run's status (%s); training continues", reason)
            return False
        self.patches_sent += 1
        return True

    def report_metrics(self, metrics: StepMetrics) -> None:
        with self._lock:
            pending = self._pending
            if pending is None or metrics.step > pending.step:
                if pending is not None and pending.validated and not metrics.validated:
                    # A validation result is rare (every checkpoint): a newer step must not drop it unsent.
                    metrics = pending.validation_only().merged(metrics)
                self._pending = metrics
            elif metrics.step == pending.step:
                self._pending = pending.merged(metrics)
            self._send_pending_if_due()

    def tick(self) -> None:
        """Send a pending update whose interval has passed (called while no new step arrives)."""
        with self._lock:
            self._send_pending_if_due()

    def _send_pending_if_due(self) -> None:
        now = self._clock()
        if self._pending is None:
            return
        if self._last_sent_at is not None and now - self._last_sent_at < self._min_interval:
            return
        pending, self._pending = self._pending, None
        self._last_sent_at = now
        self._send(progress_patch(pending, self.total_steps))

    def flush(self) -> None:
        """Send the pending update now, whatever the interval: the last update always lands."""
        with self._lock:
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self._last_sent_at = self._clock()
                self._send(progress_patch(pending, self.total_steps))

    def report_checkpoint(self, record: CheckpointRecord) -> None:
        with self._lock:
            patch: dict[str, Any] = {"checkpoint": {"step": record.step, "uri": record.uri, "time": record.time}}
            # The checkpoint goes out at once; the newest pending progress rides along in the same patch, and
            # progress never reads below a saved checkpoint (its step is done, whatever the metrics file says).
            if self._pending is not None and self._pending.step >= record.step:
                patch.update(progress_patch(self._pending, self.total_steps))
                self._pending, self._last_sent_at = None, self._clock()
            elif self._progress_sent < record.step:
                patch["progress"] = progress_patch(StepMetrics(step=record.step), self.total_steps)["progress"]
            self._send(patch)

    def report_started(self, attempt: int | None) -> None:
        """An attempt that starts from scratch says so at once (the operator counts what an interruption cost)."""
        with self._lock:
            self._send({"progress": {"attempt": attempt, "resumedFrom": 0}})

    def report_resumed(
        self,
        step: int,
        source: str,
        skipped: str = "",
        checkpoint: CheckpointRecord | None = None,
        *,
        attempt: int | None = None,
    ) -> None:
        """A resumed attempt says at once which step it continues from (and which newer checkpoints it passed
        over, and why), before its first new step; ``checkpoint``, the run's own it restored, goes in the same
        patch (a replaced attempt may have saved one more that its fenced status never showed).
        """
        with self._lock:
            self._pending, self._last_sent_at = None, self._clock()
            message = f"resumed from checkpoint step {step} ({source})" + (f"; {skipped}" if skipped else "")
            progress = progress_patch(StepMetrics(step=step), self.total_steps)["progress"]
            progress.update({"attempt": attempt, "resumedFrom": step})
            patch: dict[str, Any] = {"progress": progress, "message": message[:MAX_MESSAGE_CHARS]}
            if checkpoint is not None:
                patch["checkpoint"] = {"step": checkpoint.step, "uri": checkpoint.uri, "time": checkpoint.time}
            self._send(patch)

    def report_rollouts(self, uri: str) -> None:
        """Where this run keeps its rollouts (status.rollouts.uri), said once at the start."""
        with self._lock:
            self._send({"rollouts": {"uri": uri}})

    def report_failure(self, message: str, *, attempt: int, reason: str, permanent: bool) -> None:
        """Why this attempt failed, in words and as a reason; a permanent one ends the run without a retry."""
        with self._lock:
            patch: dict[str, Any] = {
                "message": message[:MAX_MESSAGE_CHARS],
                "failure": {"attempt": attempt, "reason": reason, "permanent": permanent},
            }
            if self._pending is not None:
                patch.update(progress_patch(self._pending, self.total_steps))
                self._pending, self._last_sent_at = None, self._clock()
            self._send(patch)

    def report_message(self, message: str) -> None:
        """Send ``message`` now, with the newest pending progress in the same patch (the last one always lands)."""
        with self._lock:
            patch: dict[str, Any] = {"message": message[:MAX_MESSAGE_CHARS]}
            if self._pending is not None:
                patch.update(progress_patch(self._pending, self.total_steps))
                self._pending, self._last_sent_at = None, self._clock()
            self._send(patch)
