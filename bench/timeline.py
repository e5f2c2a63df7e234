"""The critical path of a run, from the API server's audit log: every write between a run's create and Running.

    .venv/bin/python bench/timeline.py NAMESPACE [--audit-log PATH] [--run-prefix run-]

The audit log (`localcluster.controlplane` turns it on; `localcluster.faults.AuditLog` reads it) records every
write the API server finished: who (by user agent), what, on which object, when it arrived. Objects are matched to
runs by name (`run-17`, `loka-run-17`, `run-17-raycluster-x2b9c`, `rayjob-run-17-3f2a1` ...). For each step (who,
verb, resource, and which occurrence of it in the run's life) it prints the median and p95 offset from the run's
apply (the create of its TrainingRun, or of a plain RayJob) and how many runs had it, in order: where the time
between apply and Running goes.

`bench/reconcile.py --timeline` prints the same for both of its halves.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcluster.controlplane import LocalCluster
from localcluster.faults import AuditEvent, AuditLog
from loka_api import kinds

# A run's clock starts when the user applies it: the first create of either (a plain RayJob's ServiceAccount, made
# beforehand, shows at a negative offset).
APPLIED = frozenset({kinds.TRAINING_RUN.plural, kinds.RAY_JOB.plural})


@dataclass(frozen=True)
class Step:
    offset_p50: float
    offset_p95: float
    runs: int
    label: str


def actor(event: AuditEvent) -> str:
    """Who wrote: the program in the user agent (`kueue/v0.19.2 (linux/amd64) ...` -> kueue)."""
    agent = event.user_agent.split("/", 1)[0].split(" ", 1)[0] or event.user
    return {"OpenAPI-Generator": "client", "Python-urllib": "client"}.get(agent, agent)


def run_of(name: str, prefix: str) -> str | None:
    """The run an object belongs to, by the run's name inside the object's (`run-3` in `loka-run-3-ray-token`)."""
    found = re.search(rf"(?:^|-)({re.escape(prefix)}\d+)(?=$|-)", name)
    return found.group(1) if found else None


def per_run(events: Iterable[AuditEvent], namespace: str, prefix: str) -> dict[str, list[AuditEvent]]:
    runs: dict[str, list[AuditEvent]] = defaultdict(list)
    for event in events:
        if event.namespace != namespace or not event.landed:
            continue
        run = run_of(event.name, prefix)
        if run is not None:
            runs[run].append(event)
    for writes in runs.values():
        writes.sort(key=lambda e: e.received)
    return runs


def steps(runs: dict[str, list[AuditEvent]]) -> list[Step]:
    """Each (actor, verb, resource, k-th time) step's offsets from its run's apply, ordered by median."""
    offsets: dict[str, list[float]] = defaultdict(list)
    for writes in runs.values():
        applied = [e for e in writes if e.verb == "create" and e.resource in APPLIED]
        if not applied:
            continue
        start = applied[0].received
        seen: dict[str, int] = defaultdict(int)
        for event in writes:
            what = f"{actor(event)} {event.verb} {event.resource}"
            seen[what] += 1
            label = what if seen[what] == 1 else f"{what} #{seen[what]}"
            offsets[label].append((event.received - start).total_seconds())
    found = []
    for label, values in offsets.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        found.append(Step(statistics.median(values), p95, len(values), label))
    return sorted(found, key=lambda s: s.offset_p50)


def report(audit: AuditLog, namespace: str, prefix: str = "run-", *, min_share: float = 0.5) -> str:
    """The table: steps that at least `min_share` of the runs had."""
    runs = per_run(audit.events(), namespace, prefix)
    lines = [f"{namespace}: {len(runs)} runs; offset from each run's apply (s)", f"{'p50':>7} {'p95':>7} runs  step"]
    for step in steps(runs):
        if step.runs >= min_share * len(runs):
            lines.append(f"{step.offset_p50:>7.2f} {step.offset_p95:>7.2f} {step.runs:>4}  {step.label}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("namespace")
    parser.add_argument("--audit-log", type=Path, help="default: the local control plane's")
    parser.add_argument("--run-prefix", default="run-", help="runs are named PREFIX<number>")
    parser.add_argument("--min-share", type=float, default=0.5, help="show steps at least this share of runs had")
    args = parser.parse_args()
    audit = AuditLog(args.audit_log) if args.audit_log else LocalCluster(echo=lambda _line: None).audit_log
    print(report(audit, args.namespace, args.run_prefix, min_share=args.min_share))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
