"""Rollouts kept (``spec.rollouts``): each kept step's trajectories as JSON Lines next to the run's checkpoints.

One line per trajectory::

    {"id": "<step>-<group>-<sample>", "step": N, "group": "<step>-<group>", "messages": [{role, content}, ...],
     "score": 0.7, "components": {"judge": 0.7, "judge_ok": 1.0, ...}, "data_source": "...", "ground_truth": "..."}

``messages`` is the prompt's turns and the response as the last assistant turn. Trajectories of one prompt share a
``group`` (an Evaluation pairs within groups), and a kept step writes whole groups: a deterministic ``share`` of them,
at most ``max_per_step`` trajectories. Writing never fails the training: an S3 error is logged and the step skipped.

Both engines write through :class:`RolloutRecorder`: the trl engine from its reward function and step callback, verl
from Loka's trainer hook. The newest step written is logged as the metric ``rollouts/step`` (into status.rollouts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loka_api import RolloutsSpec
from loka_api.contract import rollout_file, rollouts_prefix
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.step_metrics import ROLLOUTS_STEP

__all__ = ["ROLLOUTS_STEP", "RolloutRecorder", "Trajectory", "conversation", "read_rollouts", "recorder_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trajectory:
    """One scored trajectory of a step, before it is kept."""

    group: int  # which prompt of the step (trajectories of one prompt share it)
    messages: list[dict[str, Any]]
    score: float
    components: Mapping[str, float] = field(default_factory=dict)
    data_source: str = ""
    ground_truth: str = ""


def conversation(
    prompt: str | Sequence[Mapping[str, Any]], response: str | Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The prompt's turns followed by the response as assistant turn(s)."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if isinstance(response, str):
        return [*turns, {"role": "assistant", "content": response}]
    return [*turns, *(dict(m) for m in response)]


def keeps_group(seed: str, step: int, group: int, share: float) -> bool:
    """Whether ``share`` keeps this group: a stable hash, so a re-run of a step keeps the same groups."""
    if share >= 1:
        return True
    digest = hashlib.sha256(f"{seed}/{step}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def select(trajectories: Sequence[Trajectory], *, step: int, spec: RolloutsSpec, seed: str) -> list[Trajectory]:
    """The trajectories a kept step writes: whole groups, a ``share`` of them, at most ``max_per_step``."""
    kept: list[Trajectory] = []
    groups: dict[int, list[Trajectory]] = {}
    for trajectory in trajectories:
        groups.setdefault(trajectory.group, []).append(trajectory)
    for group, members in sorted(groups.items()):
        if not keeps_group(seed, step, group, spec.share):
            continue
        if len(kept) + len(members) > spec.max_per_step:
            break
        kept.extend(members)
    return kept


def rollout_lines(trajectories: Iterable[Trajectory], *, step: int) -> list[dict[str, Any]]:
    lines = []
    index: dict[int, int] = {}
    for trajectory in trajectories:
        sample = index.get(trajectory.group, 0)
        index[trajectory.group] = sample + 1
        lines.append(
            {
                "id": f"{step}-{trajectory.group}-{sample}",
                "step": step,
                "group": f"{step}-{trajectory.group}",
                "messages": trajectory.messages,
                "score": _finite(trajectory.score),
                "components": {key: _finite(value) for key, value in trajectory.components.items()},
                "data_source": trajectory.data_source,
                "ground_truth": trajectory.ground_truth,
            }
        )
    return lines


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


class RolloutRecorder:
    """Writes the kept steps of one run to ``<run prefix>/rollouts/step_<N>.jsonl``."""

    def __init__(self, spec: RolloutsSpec, store: ObjectStore, run_prefix: str, *, seed: str) -> None:
        self.spec = spec
        self.store = store
        self.uri = rollouts_prefix(run_prefix)
        self.seed = seed
        self.last_step: int | None = None
        self.failures = 0

    def wants(self, step: int) -> bool:
        return step >= 1 and step % self.spec.every == 0

    def record(self, step: int, trajectories: Sequence[Trajectory]) -> str | None:
        """Write step ``step``'s kept trajectories; their S3 URI, or None when the step is not kept or failed."""
        if not self.wants(step) or not trajectories:
            return None
        lines = rollout_lines(select(trajectories, step=step, spec=self.spec, seed=self.seed), step=step)
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        target = S3Uri.parse(self.uri).join(rollout_file(step))
        try:
            self.store.put_bytes(target, body, content_type="application/x-ndjson")
        except Exception as error:  # the bucket is best effort here; training is not
            self.failures += 1
            log.warning("could not upload the rollouts of step %d: %s", step, type(error).__name__)
            return None
        self.last_step = step
        return str(target)


def recorder_for(
    spec: RolloutsSpec | None, store: ObjectStore | None, run_prefix: str | None, *, seed: str
) -> RolloutRecorder | None:
    if spec is None or store is None or run_prefix is None:
        return None
    return RolloutRecorder(spec, store, run_prefix, seed=seed)


def read_rollouts(text: str) -> list[dict[str, Any]]:
    """The trajectories of one rollouts file (blank lines skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
