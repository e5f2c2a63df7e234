"""How runs look in a terminal: the table of runs, the one-line follower, the live view of one run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml

JSON = dict[str, Any]
TERMINAL = frozenset({"Succeeded", "Failed"})
BAR_WIDTH = 20


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def age(value: str | None, now: datetime | None = None) -> str:
    """kubectl's short ages: 45s, 12m, 3h, 2d."""
    moment = parse_time(value)
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


def _status(run: JSON) -> JSON:
    status: JSON = run.get("status") or {}
    return status


def progress_bar(step: int, total: int) -> str:
    done = int(BAR_WIDTH * min(step, total) / total) if total else 0
    return "[" + "#" * done + "." * (BAR_WIDTH - done) + "]"


def _float(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def table(runs: list[JSON], *, all_namespaces: bool = False, now: datetime | None = None) -> str:
    """One line per run: the printer columns of `kubectl get trainingruns`, plus the attempt."""
    header = ["NAME", "PHASE", "STEP", "REWARD", "CHECKPOINT", "QUEUE", "ATTEMPT", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for run in runs:
        status, spec = _status(run), run.get("spec") or {}
        progress = status.get("progress") or {}
        step, total = progress.get("step"), progress.get("totalSteps")
        row = [
            run["metadata"]["name"],
            status.get("phase") or "Pending",
            "-" if step is None else (f"{step}/{total}" if total else str(step)),
            _float((status.get("metrics") or {}).get("rewardMean"), 3),
            str((status.get("checkpoint") or {}).get("step", "-")),
            (spec.get("queue") or {}).get("name", "-"),
            str(status.get("attempt") or "-"),
            age(run["metadata"].get("creationTimestamp"), now),
        ]
        if all_namespaces:
            row.insert(0, run["metadata"]["namespace"])
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def describe_line(status: JSON) -> str:
    """One line that changes when the phase, step, reward or checkpoint does (submit --wait, the demo)."""
    phase = status.get("phase") or "Pending"
    progress, metrics, checkpoint = status.get("progress") or {}, status.get("metrics") or {}, status.get("checkpoint")
    parts = [f"{phase:<10}"]
    if progress.get("step") is not None:
        total = progress.get("totalSteps")
        parts.append(f"step {progress['step']}/{total}" if total else f"step {progress['step']}")
        if total:
            parts.insert(1, progress_bar(progress["step"], total))
    if metrics.get("rewardMean") is not None:
        parts.append(f"reward {metrics['rewardMean']:.3f}")
    if metrics.get("klLoss") is not None:
        parts.append(f"kl {metrics['klLoss']:.4f}")
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.3f}")
    if (validation := validation_text(metrics)) is not None:
        parts.append(validation)
    if checkpoint and checkpoint.get("step") is not None:
        parts.append(f"checkpoint step {checkpoint['step']}")
    if phase not in ("Running", "Succeeded") and status.get("message"):
        parts.append(f"— {status['message'][:100]}")
    return "  ".join(parts)


def validation_text(metrics: JSON) -> str | None:
    """The held-out split's figure and the step it was measured at: reward for RL, loss for SFT."""
    step = metrics.get("validationStep")
    at = "before training" if step == 0 else f"at step {step}"
    if metrics.get("validationRewardMean") is not None:
        return f"validation reward {metrics['validationRewardMean']:.3f} {at}"
    if metrics.get("validationLoss") is not None:
        return f"validation loss {metrics['validationLoss']:.3f} {at}"
    return None


def eta_seconds(status: JSON, observed_rate: float | None = None) -> tuple[float, float] | None:
    """(seconds left, seconds per step): from the trainer's step times, else from what a watcher observed."""
    progress = status.get("progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    per_step = (status.get("metrics") or {}).get("secondsPerStep") or observed_rate
    if step is None or not total or not per_step or step >= total:
        return None
    return (total - step) * per_step, per_step


def interruptions_text(status: JSON) -> str | None:
    """What preemptions, suspensions and retries cost the run, in total, and the last one in Kueue's words."""
    totals = status.get("interruptionTotals") or {}
    if not totals.get("count"):
        return None
    count = totals["count"]
    text = (
        f"interrupted {count} time{'s' if count != 1 else ''}: {totals.get('stepsLost', 0)} steps lost, "
        f"{totals.get('gpuHoursLost', 0.0):.2f} GPU-hours, stopped {duration(totals.get('secondsStopped', 0.0))}"
    )
    last = (status.get("interruptions") or [{}])[-1]
    if last.get("reason"):
        cost = (
            f"step {last.get('stepReached')} -> resumed from {last['resumedFrom']}"
            if last.get("resumedFrom") is not None
            else f"at step {last.get('stepReached')}, not running again yet"
        )
        text += f"; last: {last['reason']} ({cost})"
    return text


def live_view(run: JSON, *, queue: str | None = None, observed_rate: float | None = None) -> str:
    """The live view of one run: phase, progress bar, step, reward, KL, checkpoint, queue and why, ETA."""
    meta, status = run["metadata"], _status(run)
    phase = status.get("phase") or "Pending"
    attempt = f"attempt {status['attempt']}" if status.get("attempt") else ""
    lines = [f"{meta['name']}  ({meta['namespace']})  {phase}  {attempt}".rstrip()]
    progress, metrics = status.get("progress") or {}, status.get("metrics") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    if step is not None:
        share = f"  {100 * step // total}%" if total else ""
        bar = f"{progress_bar(step, total)}  " if total else ""
        lines.append(f"  {bar}step {step}{f'/{total}' if total else ''}{share}")
    if metrics:
        headline = (
            f"  loss {_float(metrics.get('loss'), 3)}"  # SFT has a loss where RL has a reward
            if metrics.get("loss") is not None and metrics.get("rewardMean") is None
            else f"  reward {_float(metrics.get('rewardMean'), 3)}   kl {_float(metrics.get('klLoss'), 4)}"
        )
        lines.append(
            headline + (f"   tokens/s {metrics['tokensPerSecond']:.0f}" if metrics.get("tokensPerSecond") else "")
        )
        if (validation := validation_text(metrics)) is not None:
            lines.append(f"  {validation}")
    source = status.get("source") or {}
    if source.get("uri"):
        lines.append(f"  started from run {source.get('run')}, checkpoint step {source.get('step')}  {source['uri']}")
    checkpoint = status.get("checkpoint") or {}
    if checkpoint.get("step") is not None:
        lines.append(
            f"  checkpoint step {checkpoint['step']}  {checkpoint.get('uri', '')}  ({age(checkpoint.get('time'))} ago)"
        )
    if (lost := interruptions_text(status)) is not None:
        lines.append(f"  {lost}")
    if phase not in TERMINAL and (eta := eta_seconds(status, observed_rate)) is not None:
        left, per_step = eta
        lines.append(f"  ETA {duration(left)}  ({per_step:.1f} s/step)")
    if queue:
        lines.append(f"  queue: {queue}")
    if status.get("message") and (phase != "Running" or "resumed" in status["message"]):
        lines.append(f"  {status['message'][:300]}")
    if status.get("dashboardURL") and phase not in TERMINAL:
        lines.append(f"  dashboard: loka dashboard {meta['name']}   logs: loka logs {meta['name']} -f")
    if status.get("wandbURL"):
        lines.append(f"  W&B: {status['wandbURL']}")
    return "\n".join(lines)


def dump(obj: Any, output: str) -> str:
    if output == "json":
        return json.dumps(obj, indent=2, default=str)
    return yaml.safe_dump(obj, sort_keys=False).rstrip()
