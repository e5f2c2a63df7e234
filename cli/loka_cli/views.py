"""How runs look in a terminal: the table of runs and the live view of one run (the one-line follower is the
client library's ``describe_line``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from loka_api import (
    ConditionType,
    DeadlineSpec,
    Metrics,
    ObjectMeta,
    RunPhase,
    TrainingRun,
    TrainingRunStatus,
)
from loka_api.phases import TERMINAL
from loka_client.describe import progress_bar, validation_text


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """kubectl's short ages: 45s, 12m, 3h, 2d."""
    if moment is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    return duration(max(seconds, 0))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 600 else f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"


def _float(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def columns(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], *, all_namespaces: bool = False) -> str:
    """Rows of ``(namespace, cells)`` aligned under the header as kubectl aligns them; with ``all_namespaces``, a
    NAMESPACE column first."""
    lines = [["NAMESPACE", *header] if all_namespaces else list(header)]
    lines += [[namespace, *cells] if all_namespaces else list(cells) for namespace, cells in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def table(runs: Sequence[TrainingRun], *, all_namespaces: bool = False, now: datetime | None = None) -> str:
    """One line per run: the printer columns of `kubectl get trainingruns`, plus the attempt."""
    rows = []
    for run in runs:
        status = run.status
        step = status.progress.step if status.progress else None
        total = status.progress.total_steps if status.progress else None
        checkpoint = status.checkpoint.step if status.checkpoint else None
        cells = [
            run.metadata.name,
            status.phase or RunPhase.PENDING,
            "-" if step is None else (f"{step}/{total}" if total else str(step)),
            _float((status.metrics or Metrics()).reward_mean, 3),
            "-" if checkpoint is None else str(checkpoint),
            run.spec.queue.name if run.spec.queue else "-",
            str(status.attempt or "-"),
            age(run.metadata.creation_timestamp, now),
        ]
        rows.append((run.metadata.namespace, cells))
    header = ["NAME", "PHASE", "STEP", "REWARD", "CHECKPOINT", "QUEUE", "ATTEMPT", "AGE"]
    return columns(header, rows, all_namespaces=all_namespaces)


def eta_seconds(status: TrainingRunStatus, observed_rate: float | None = None) -> tuple[float, float] | None:
    """(seconds left, seconds per step): from the trainer's step times, else from what a watcher observed."""
    step = status.progress.step if status.progress else None
    total = status.progress.total_steps if status.progress else None
    per_step = (status.metrics.seconds_per_step if status.metrics else None) or observed_rate
    if step is None or not total or not per_step or step >= total:
        return None
    return (total - step) * per_step, per_step


def interruptions_text(status: TrainingRunStatus) -> str | None:
    """What preemptions, suspensions and retries cost the run, in total, and the last one in Kueue's words."""
    totals = status.interruption_totals
    if totals is None or not totals.count:
        return None
    count = totals.count
    text = (
        f"interrupted {count} time{'s' if count != 1 else ''}: {totals.steps_lost} steps lost, "
        f"{totals.gpu_hours_lost:.2f} GPU-hours, stopped {duration(totals.seconds_stopped)}"
    )
    last = status.interruptions[-1] if status.interruptions else None
    if last is not None and last.reason:
        cost = (
            f"step {last.step_reached} -> resumed from {last.resumed_from}"
            if last.resumed_from is not None
            else f"at step {last.step_reached}, not running again yet"
        )
        text += f"; last: {last.reason} ({cost})"
    return text


DEADLINE_EXCEEDED = "DeadlineExceeded"
PINS_SHOWN = 4  # dependents named per pinned step; the rest are counted


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def deadline_text(deadline: DeadlineSpec | None, status: TrainingRunStatus, now: datetime | None = None) -> str | None:
    """spec.deadline as it stands: the time left, or that it passed and ended the run."""
    if deadline is None:
        return None
    limit = duration(deadline.seconds)
    ends = deadline.ends(status.start_time)
    if ends is None:
        return f"deadline {limit} from its first start"
    failed = next((c for c in status.conditions if c.type == ConditionType.FAILED and c.status == "True"), None)
    if failed is not None and failed.reason == DEADLINE_EXCEEDED:
        return f"deadline exceeded at {_clock(ends)} ({limit} from its start): ended with its last checkpoint"
    if status.phase in TERMINAL:
        ended = status.completion_time
        if status.phase == RunPhase.SUCCEEDED and ended is not None and ended <= ends:
            return f"deadline {limit}: finished {duration((ends - ended).total_seconds())} before it"
        return None
    left = (ends - (now or datetime.now(UTC))).total_seconds()
    if left > 0:
        return f"deadline in {duration(left)} (at {_clock(ends)}, {limit} from its start)"
    return f"deadline exceeded {duration(-left)} ago (at {_clock(ends)}): the run ends after saving the step it is on"


def pins_text(status: TrainingRunStatus) -> str | None:
    """The checkpoints that dependent runs (spec.model.fromRun) still need: pruning keeps them."""
    holders: dict[int, list[str]] = {}
    for pin in sorted(status.pins, key=lambda p: (p.step, p.run)):
        holders.setdefault(pin.step, []).append(pin.run)
    if not holders:
        return None

    def named(runs: list[str]) -> str:
        more = len(runs) - PINS_SHOWN
        return ", ".join(runs[:PINS_SHOWN]) + (f" and {more} more" if more > 0 else "")

    held = "; ".join(f"step {step} for {named(runs)}" for step, runs in holders.items())
    return f"kept for dependent runs: checkpoint {held}"


def _parts(run: TrainingRun | Mapping[str, Any]) -> tuple[ObjectMeta, TrainingRunStatus, DeadlineSpec | None]:
    if isinstance(run, TrainingRun):
        return run.metadata, run.status, run.spec.deadline
    deadline = (run.get("spec") or {}).get("deadline")
    return (
        ObjectMeta.model_validate(run.get("metadata") or {}),
        TrainingRunStatus.model_validate(run.get("status") or {}),
        None if deadline is None else DeadlineSpec.model_validate(deadline),
    )


def live_view(
    run: TrainingRun | Mapping[str, Any],
    *,
    queue: str | None = None,
    observed_rate: float | None = None,
    now: datetime | None = None,
) -> str:
    """The live view of one run: phase, progress bar, step, reward, KL, checkpoint and the dependents it is kept
    for, what interruptions cost, the deadline, ETA, queue and why."""
    meta, status, deadline = _parts(run)
    phase = status.phase or RunPhase.PENDING
    attempt = f"attempt {status.attempt}" if status.attempt else ""
    lines = [f"{meta.name}  ({meta.namespace})  {phase}  {attempt}".rstrip()]
    progress, metrics = status.progress, status.metrics
    if progress is not None and progress.step is not None:
        step, total = progress.step, progress.total_steps
        share = f"  {100 * step // total}%" if total else ""
        bar = f"{progress_bar(step, total)}  " if total else ""
        lines.append(f"  {bar}step {step}{f'/{total}' if total else ''}{share}")
    if metrics is not None and metrics != Metrics():
        headline = (
            f"  loss {_float(metrics.loss, 3)}"  # SFT has a loss where RL has a reward
            if metrics.loss is not None and metrics.reward_mean is None
            else f"  reward {_float(metrics.reward_mean, 3)}   kl {_float(metrics.kl_loss, 4)}"
        )
        lines.append(headline + (f"   tokens/s {metrics.tokens_per_second:.0f}" if metrics.tokens_per_second else ""))
        if metrics.reward_components:
            parts = (f"{name} {_float(value, 3)}" for name, value in sorted(metrics.reward_components.items()))
            lines.append("  components  " + "   ".join(parts))
        if (validation := validation_text(metrics)) is not None:
            lines.append(f"  {validation}")
    source = status.source
    if source is not None and source.uri:
        lines.append(f"  started from run {source.run}, checkpoint step {source.step}  {source.uri}")
    checkpoint = status.checkpoint
    if checkpoint is not None and checkpoint.step is not None:
        lines.append(f"  checkpoint step {checkpoint.step}  {checkpoint.uri or ''}  ({age(checkpoint.time)} ago)")
    if (pinned := pins_text(status)) is not None:
        lines.append(f"  {pinned}")
    if (lost := interruptions_text(status)) is not None:
        lines.append(f"  {lost}")
    if (limit := deadline_text(deadline, status, now)) is not None:
        lines.append(f"  {limit}")
    if phase not in TERMINAL and (eta := eta_seconds(status, observed_rate)) is not None:
        left, per_step = eta
        lines.append(f"  ETA {duration(left)}  ({per_step:.1f} s/step)")
    if queue:
        lines.append(f"  queue: {queue}")
    if status.message and (phase != RunPhase.RUNNING or "resumed" in status.message):
        lines.append(f"  {status.message[:300]}")
    if status.dashboard_url and phase not in TERMINAL:
        lines.append(f"  dashboard: loka dashboard {meta.name}   logs: loka logs {meta.name} -f")
    if status.wandb_url:
        lines.append(f"  W&B: {status.wandb_url}")
    return "\n".join(lines)


def dump(obj: Any, output: str) -> str:
    if output == "json":
        return json.dumps(obj, indent=2, default=str)
    return yaml.safe_dump(obj, sort_keys=False).rstrip()
