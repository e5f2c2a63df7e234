"""submit, status, suspend, resume, delete: what the client library returns, printed."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from loka_api.phases import TERMINAL
from loka_cli import resources
from loka_cli.errors import EXIT_FAILED, EXIT_OK, usage
from loka_cli.views import dump, live_view, table
from loka_client import Client, InvalidRunError, Run
from loka_client.describe import describe_line


def submit(
    client: Client,
    path: str,
    *,
    wait: bool,
    timeout: float,
    force_conflicts: bool,
    dry_run: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    applied = resources.submit(client.runs, path, dry_run=dry_run, force_conflicts=force_conflicts, out=out)
    if not wait or dry_run:
        return EXIT_OK
    final = follow(client, applied.name, timeout=timeout, out=out)
    return resources.exit_code(final)


def follow(client: Client, name: str, *, timeout: float, out: TextIO | None = None) -> Run:
    """Print one line each time the run's phase, step, reward or checkpoint changes; return the run as it ended."""
    out = out or sys.stdout
    run = resources.follow(client.runs, name, line=lambda r: describe_line(r.status), timeout=timeout, out=out)
    if run.phase == "Failed":
        print(f"  run failed: {run.status.message or '(no message)'}", file=out)
        print(f"  see why: loka logs {name} -n {client.namespace}", file=out)
    return run


def _table(runs: Sequence[Run], all_namespaces: bool) -> str:
    return table(runs, all_namespaces=all_namespaces)


def status(
    client: Client,
    name: str | None,
    *,
    watch: bool,
    all_namespaces: bool,
    output: str | None,
    timeout: float,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    followed = (lambda n: _watch(client, n, timeout=timeout, output=output, out=out)) if watch else None
    return resources.status(
        client.runs, name, "loka status", _table, lambda run: live_view(run, queue=_queue(client, run)), followed,
        all_namespaces=all_namespaces, output=output, out=out,
    )  # fmt: skip


def _queue(client: Client, run: Run) -> str | None:
    standing = client.queue_standing(run)
    return None if standing is None else str(standing)


def _watch(client: Client, name: str, *, timeout: float, output: str | None, out: TextIO) -> int:
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


def delete(client: Client, name: str, *, wait: bool, timeout: float, out: TextIO | None = None) -> int:
    return resources.delete(
        client.runs, name, wait=wait, timeout=timeout, out=out or sys.stdout,
        after="its RayJob and Ray cluster go with it; checkpoints stay in S3",
    )  # fmt: skip
