"""The run commands: how a run is printed (``PRINTER``), its live view followed, suspend and resume."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from loka_api.phases import TERMINAL
from loka_cli import resources
from loka_cli.errors import EXIT_FAILED, EXIT_OK, usage
from loka_cli.views import dump, live_view, table
from loka_client import Client, InvalidRunError, Run
from loka_client.describe import describe_line


def _ended(client: Client, run: Run) -> str | None:
    """A followed run that failed: why, and where to look."""
    if run.phase != "Failed":
        return None
    return (
        f"  run failed: {run.status.message or '(no message)'}\n  see why: loka logs {run.name} -n {client.namespace}"
    )


def _queue(client: Client, run: Run) -> str | None:
    standing = client.queue_standing(run)
    return None if standing is None else str(standing)


def watch_live(client: Client, name: str, *, timeout: float, output: str | None, out: TextIO | None = None) -> int:
    """`loka status NAME -w`: the run's live view, redrawn on a terminal, until it ends (or as JSON or YAML)."""
    out = out or sys.stdout
    redraw = out.isatty() and output is None
    samples: list[tuple[float, int]] = []
    last = ""
    for change in client.watch(name, timeout=timeout):
        run = change.run
        if output:
            print(dump(run.manifest, output), file=out, flush=True)
        else:
            step = run.status.progress.step if run.status.progress else None
            if step is not None and (not samples or samples[-1][1] != step):
                samples.append((time.monotonic(), step))
            rate = None
            if len(samples) >= 2 and samples[-1][1] > samples[0][1]:
                rate = (samples[-1][0] - samples[0][0]) / (samples[-1][1] - samples[0][1])
            view = live_view(run, queue=_queue(client, run), observed_rate=rate)
            if view != last:
                print(("\x1b[H\x1b[2J" if redraw else ("\n" if last else "")) + view, file=out, flush=True)
                last = view
        if run.finished:
            return EXIT_OK if run.phase == "Succeeded" else EXIT_FAILED
    return EXIT_OK


def set_suspend(client: Client, name: str, suspend: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    run = client.get(name)
    if run.status.phase in TERMINAL:
        raise usage(f"{name} is {run.status.phase}: a finished run cannot be {'suspended' if suspend else 'resumed'}")
    if run.spec.suspend == suspend:
        print(f"trainingrun.loka.dev/{name} already {'suspended' if suspend else 'running (not suspended)'}", file=out)
        return EXIT_OK
    try:
        client.suspend(name) if suspend else client.resume(name)
    except InvalidRunError as error:  # it ended meanwhile
        raise usage(error.message) from error
    what = (
        "suspended: the trainer saves the step it is on, then its Ray cluster is released; "
        "`loka resume` continues from that checkpoint"
        if run.spec.checkpoints is not None
        else "suspended: its Ray cluster is released (no spec.checkpoints: nothing is saved)"
    )
    print(f"trainingrun.loka.dev/{name} {what if suspend else 'resumed'}", file=out)
    return EXIT_OK


PRINTER: resources.Printer[Run] = resources.Printer(
    objects=lambda client: client.runs,
    command="loka status",
    table=lambda found, all_namespaces: table(found, all_namespaces=all_namespaces),
    describe=lambda client, run: live_view(run, queue=_queue(client, run)),
    line=lambda run: describe_line(run.status),
    ended=_ended,
    deleted="its RayJob and Ray cluster go with it; checkpoints stay in S3",
)
