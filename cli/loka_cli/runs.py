"""submit, status, suspend, resume, delete: what the client library returns, printed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from loka_api.phases import TERMINAL
from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, usage
from loka_cli.views import dump, live_view, table
from loka_client import Client, InvalidRunError, Run, WaitTimeoutError
from loka_client.describe import describe_line
from loka_client.runs import JSON, checked_manifest, parse_manifest


def read_manifest(path: str, namespace_flag: str | None, default_namespace: Callable[[], str]) -> JSON:
    """The TrainingRun in ``path`` (``-`` for stdin), checked against the models before it is sent."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise usage(f"-f {path}: {error.strerror}") from error
    manifest = checked_manifest(parse_manifest(text, f"-f {path}"), namespace_flag, f"-f {path}")
    manifest["metadata"]["namespace"] = manifest["metadata"].get("namespace") or default_namespace()
    return manifest


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
    manifest = read_manifest(path, client.connection.namespace_flag, lambda: client.namespace)
    client.connection.use_namespace(manifest["metadata"]["namespace"])
    applied = client.apply(manifest, force_conflicts=force_conflicts, dry_run=dry_run)
    created = applied.metadata.generation == 1 and not applied.manifest.get("status")
    verb = "validated (server dry run)" if dry_run else ("created" if created else "configured")
    print(f"trainingrun.loka.dev/{applied.name} {verb} in namespace {applied.namespace}", file=out, flush=True)
    if not wait or dry_run:
        return EXIT_OK
    final = follow(client, applied.name, timeout=timeout, out=out)
    return EXIT_OK if final.phase == "Succeeded" else EXIT_FAILED


def follow(client: Client, name: str, *, timeout: float, out: TextIO | None = None) -> Run:
    """Print one line each time the run's phase, step, reward or checkpoint changes; return the run as it ended."""
    out = out or sys.stdout
    started = time.monotonic()
    last = ""
    run: Run | None = None
    for change in client.watch(name, timeout=timeout):
        run = change.run
        line = describe_line(run.status)
        if line != last:
            print(f"  [{time.monotonic() - started:6.1f}s] {line}", file=out, flush=True)
            last = line
    if run is None or not run.finished:
        raise WaitTimeoutError(
            f"{name} did not finish within {timeout:.0f}s; last seen: {last}",
            run,
            hint=f"it keeps running; watch it with `loka status {name} -w -n {client.namespace}`",
        )
    if run.phase == "Failed":
        print(f"  run failed: {run.status.message or '(no message)'}", file=out)
        print(f"  see why: loka logs {name} -n {client.namespace}", file=out)
    return run


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
    if name is None:
        if watch:
            raise usage("-w needs a run name", "loka status NAME -w")
        runs = client.list(all_namespaces=all_namespaces)
        if output:
            print(dump({"apiVersion": "v1", "kind": "List", "items": [r.manifest for r in runs]}, output), file=out)
        elif not runs:
            where = "any namespace" if all_namespaces else f"namespace {client.namespace!r}"
            print(f"No TrainingRuns in {where}.", file=out)
        else:
            print(table(runs, all_namespaces=all_namespaces), file=out)
        return EXIT_OK
    if not watch:
        run = client.get(name)
        if output:
            print(dump(run.manifest, output), file=out)
        else:
            print(live_view(run, queue=_queue(client, run)), file=out)
        return EXIT_OK
    return _watch(client, name, timeout=timeout, output=output, out=out)


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
    out = out or sys.stdout
    try:
        client.delete(name, wait=wait, timeout=timeout)
    except WaitTimeoutError as error:
        raise CliError(error.message) from error
    print(
        f'trainingrun.loka.dev "{name}" deleted (its RayJob and Ray cluster go with it; checkpoints stay in S3)',
        file=out,
    )
    return EXIT_OK
