"""verl's per-step metrics: the ``file`` logger's JSONL lines ``{"step": N, "data": {...}}``, followed as they grow.

The TRL engine writes the same lines under the same metric names, so one follower serves both engines.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# verl metric names (verl/trainer/ppo/metric_utils.py, trainer_base.py) behind each status.metrics field.
STEP = "training/global_step"
EPOCH = "training/epoch"
REWARD_MEAN = "critic/score/mean"
KL_LOSS = "actor/kl_loss"
RESPONSE_LENGTH_MEAN = "response_length/mean"
TOTAL_TOKENS = "perf/total_num_tokens"
TIME_PER_STEP = "perf/time_per_step"
THROUGHPUT_PER_GPU = "perf/throughput"
VALIDATION_PREFIX = "val-core/"
# verl's SFT trainer (sft_trainer_ray.py): the step's loss, and the loss on the validation set.
SFT_LOSS = "train/loss"
SFT_VALIDATION_LOSS = "val/loss"
# Loka's domain metrics, logged every step by both engines (loka_trainer.reward_metrics, loka_trainer.rollouts).
DOMAIN_PREFIXES = ("reward/", "judge/", "rm/", "env/", "rollouts/", "perf/samples_per_min")
SAMPLES_PER_MINUTE = "perf/samples_per_min"
REWARD_PREFIX, MEAN_SUFFIX = "reward/", "/mean"
REWARD_TOTAL_MEAN = "reward/total/mean"
ROLLOUTS_STEP = "rollouts/step"
# rm: the share of held-out preference pairs scored chosen above rejected (TRL's eval accuracy).
PAIRWISE_ACCURACY = "val/pairwise_accuracy"


@dataclass(frozen=True)
class StepMetrics:
    """One logged step, reduced to the fields the run's status shows."""

    step: int
    epoch: int | None = None
    reward_mean: float | None = None
    kl_loss: float | None = None
    response_length_mean: float | None = None
    tokens_per_second: float | None = None
    loss: float | None = None
    validation_reward_mean: float | None = None
    validation_loss: float | None = None
    pairwise_accuracy: float | None = None
    validation_step: int | None = None  # the step the validation figures belong to
    seconds_per_step: float | None = None
    rollouts_step: int | None = None  # the newest step whose rollouts were written (spec.rollouts)
    reward_components: Mapping[str, float] | None = None  # each reward component's mean (reward/<name>/mean)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def validated(self) -> bool:
        """This record carries a validation figure."""
        return self.validation_step is not None

    def merged(self, newer: StepMetrics) -> StepMetrics:
        """Two records of one step (verl logs validation apart from training): every figure either holds."""
        values = {name: getattr(newer, name) for name in _FIGURES if getattr(newer, name) is not None}
        return replace(self, step=newer.step, **values, raw={**self.raw, **newer.raw})

    def validation_only(self) -> StepMetrics:
        """Only this record's validation figures (kept when a newer step overtakes it unsent)."""
        return StepMetrics(
            step=self.step,
            validation_reward_mean=self.validation_reward_mean,
            validation_loss=self.validation_loss,
            pairwise_accuracy=self.pairwise_accuracy,
            validation_step=self.validation_step,
        )


_FIGURES = (
    "epoch",
    "reward_mean",
    "kl_loss",
    "response_length_mean",
    "tokens_per_second",
    "seconds_per_step",
    "loss",
    "validation_reward_mean",
    "validation_loss",
    "pairwise_accuracy",
    "validation_step",
    "rollouts_step",
    "reward_components",
)


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _validation_reward(data: Mapping[str, Any]) -> float | None:
    """verl's headline validation number: ``val-core/<source>/reward/mean@N`` (else the first other
    ``val-core/.../mean@N``, e.g. ``acc``).
    """
    keys = [k for k in sorted(data) if k.startswith(VALIDATION_PREFIX) and "/mean@" in k]
    for key in sorted(keys, key=lambda k: "/reward/mean@" not in k):
        if (score := _number(data, key)) is not None:
            return score
    return None


def _reward_components(data: Mapping[str, Any]) -> dict[str, float] | None:
    """Each reward component's mean, ``reward/<component>/mean`` (the total is status's rewardMean)."""
    found = {
        key[len(REWARD_PREFIX) : -len(MEAN_SUFFIX)]: value
        for key in data
        if key.startswith(REWARD_PREFIX) and key.endswith(MEAN_SUFFIX) and key != REWARD_TOTAL_MEAN
        and key.count("/") == 2 and (value := _number(data, key)) is not None
    }  # fmt: skip
    return found or None


def parse_line(line: str | bytes) -> StepMetrics | None:
    """One JSONL line to StepMetrics; None for anything that is not a step record (torn, foreign or empty lines)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        return None
    data: dict[str, Any] = record["data"]
    step = _number(data, STEP)
    if step is None:
        step = _number(record, "step")
    if step is None:
        return None
    tokens, seconds = _number(data, TOTAL_TOKENS), _number(data, TIME_PER_STEP)
    # Whole-cluster tokens/s; verl's perf/throughput is per GPU, used only when the totals are missing.
    tokens_per_second = tokens / seconds if tokens is not None and seconds else _number(data, THROUGHPUT_PER_GPU)
    epoch = _number(data, EPOCH)
    validation_reward, validation_loss = _validation_reward(data), _number(data, SFT_VALIDATION_LOSS)
    rollouts_step = _number(data, ROLLOUTS_STEP)
    pairwise_accuracy = _number(data, PAIRWISE_ACCURACY)
    return StepMetrics(
        step=int(step),
        epoch=None if epoch is None else int(epoch),
        reward_mean=_number(data, REWARD_MEAN),
        kl_loss=_number(data, KL_LOSS),
        response_length_mean=_number(data, RESPONSE_LENGTH_MEAN),
        tokens_per_second=tokens_per_second,
        loss=_number(data, SFT_LOSS),
        validation_reward_mean=validation_reward,
        validation_loss=validation_loss,
        pairwise_accuracy=pairwise_accuracy,
        validation_step=int(step)
        if validation_reward is not None or validation_loss is not None or pairwise_accuracy is not None
        else None,
        seconds_per_step=seconds,
        rollouts_step=None if rollouts_step is None else int(rollouts_step),
        reward_components=_reward_components(data),
        raw=data,
    )


# Bytes read per poll; verl's step records are a few KiB each.
MAX_CHUNK_BYTES = 4 * 1024 * 1024

# (path, offset) -> (file size or -1 when missing, bytes from offset)
FileReader = Callable[[str, int], tuple[int, bytes]]


def read_local(path: str, offset: int) -> tuple[int, bytes]:
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        return -1, b""
    if size <= offset:
        return size, b""
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        return size, handle.read(min(size - offset, MAX_CHUNK_BYTES))


class MetricsFollower:
    """Follows a JSONL file that may not exist yet, may be truncated (verl reopens it with ``wb`` on restart),
    and may have a half-written last line. Delivers every complete step record once, in order.
    ``reader`` fetches bytes (this machine by default; loka_trainer.nodes reads it on another Ray node).
    """

    def __init__(self, path: Path, reader: FileReader = read_local) -> None:
        self.path = path
        self._read = reader
        self._offset = 0
        self._partial = b""

    def poll(self) -> Iterator[StepMetrics]:
        size, chunk = self._read(str(self.path), self._offset)
        if size < 0:
            return
        if size < self._offset:
            log.info("metrics file %s was truncated (restart); following it from the start", self.path)
            self._offset, self._partial = 0, b""
            size, chunk = self._read(str(self.path), 0)
        if not chunk:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip() and (parsed := parse_line(line)) is not None:
                yield parsed


class MetricsWriter:
    """Appends step records in verl's file-logger format (used by engines that are not verl)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("ab", buffering=0)

    def log(self, step: int, data: Mapping[str, float | int]) -> None:
        self._handle.write(json.dumps({"step": step, "data": dict(data)}).encode() + b"\n")

    def close(self) -> None:
        self._handle.close()
