"""verl's per-step metrics: the ``file`` logger's JSONL lines ``{"step": N, "data": {...}}``, followed as they grow.

The TRL engine writes the same lines under the same metric names, so one follower serves both engines.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class StepMetrics:
    """One logged step, reduced to the fields the run's status shows."""

    step: int
    epoch: int | None = None
    reward_mean: float | None = None
    kl_loss: float | None = None
    response_length_mean: float | None = None
    tokens_per_second: float | None = None
    validation_score: float | None = None
    seconds_per_step: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _validation_score(data: Mapping[str, Any]) -> float | None:
    """The first ``val-core/<source>/(reward|acc)/mean@N`` value: the headline validation number verl logs."""
    for key in sorted(data):
        if key.startswith(VALIDATION_PREFIX) and "/mean@" in key and (score := _number(data, key)) is not None:
            return score
    return None


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
    return StepMetrics(
        step=int(step),
        epoch=None if epoch is None else int(epoch),
        reward_mean=_number(data, REWARD_MEAN),
        kl_loss=_number(data, KL_LOSS),
        response_length_mean=_number(data, RESPONSE_LENGTH_MEAN),
        tokens_per_second=tokens_per_second,
        validation_score=_validation_score(data),
        seconds_per_step=seconds,
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
