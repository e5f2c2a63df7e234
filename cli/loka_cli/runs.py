"""submit, status, suspend, resume, delete: a run's lifecycle through the API server."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from loka_api import KIND, TrainingRun
from loka_cli.cluster import Cluster
from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, usage
from loka_cli.queue import queue_position
from loka_cli.views import TERMINAL, describe_line, dump, live_view, table

JSON = dict[str, Any]


def read_manifest(path: str, namespace_flag: str | None, default_namespace: Callable[[], str]) -> JSON:
    """The TrainingRun in ``path`` (``-`` for stdin), checked against the models before it is sent."""
    from pydantic import ValidationError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise usage(f"-f {path}: {error.strerror}") from error
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise usage(f"-f {path}: not valid YAML: {error}") from error
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(runs) != 1:
        raise usage(f"-f {path}: expected one {KIND}, found {len(runs)}", "write one run per file (`loka init NAME`)")
    manifest = runs[0]
    meta = manifest.setdefault("metadata", {})
    if not meta.get("name"):
        raise usage(f"-f {path}: metadata.name is missing")
    if namespace_flag and meta.get("namespace") and meta["namespace"] != namespace_flag:
        raise usage(
            f"-f {path}: the run's namespace {meta['namespace']!r} does not match --namespace {namespace_flag!r}",
            "drop one of them",
        )
    meta["namespace"] = meta.get("namespace") or namespace_flag or default_namespace()
    try:
        TrainingRun.model_validate(manifest)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in error.errors()
        )
        raise usage(
            f"-f {path}: {problems}", "fix the field and submit again (`loka init` writes a valid run)"
        ) from error
    return manifest


def submit(
    cluster: Cluster,
    path: str,
    *,
    wait: bool,
    timeout: float,
    force_conflicts: bool,
    dry_run: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    manifest = read_manifest(path, cluster.namespace_flag, lambda: cluster.namespace)
    cluster.namespace_flag = manifest["metadata"]["namespace"]
    cluster._namespace = manifest["metadata"]["namespace"]
    applied = cluster.apply_run(manifest, force=force_conflicts, dry_run=dry_run)
    meta = applied["metadata"]
    created = meta.get("generation") == 1 and not (applied.get("status") or {})
    verb = "validated (server dry run)" if dry_run else ("created" if created else "configured")
    print(f"trainingrun.loka.dev/{meta['name']} {verb} in namespace {meta['namespace']}", file=out, flush=True)
    if not wait or dry_run:
        return EXIT_OK
    status = follow(cluster, meta["name"], timeout=timeout, out=out)
    return EXIT_OK if status.get("phase") == "Succeeded" else EXIT_FAILED


def follow(
    cluster: Cluster,
    name: str,
    *,
    timeout: float,
    out: TextIO | None = None,
    on_status: Callable[[JSON], None] | None = None,
) -> JSON:
    """Print one line each time the run's phase, step, reward or checkpoint changes; return the final status."""
    out = out or sys.stdout
    started = time.monotonic()
    last = ""
    status: JSON = {}
    for run in cluster.watch_run(name, timeout=timeout):
        status = run.get("status") or {}
        if on_status is not None:
            on_status(status)
        line = describe_line(status)
        if line != last:
            print(f"  [{time.monotonic() - started:6.1f}s] {line}", file=out, flush=True)
            last = line
        if status.get("phase") in TERMINAL and status.get("observedGeneration") == run["metadata"].get("generation"):
            if status.get("phase") == "Failed":
                print(f"  run failed: {status.get('message') or '(no message)'}", file=out)
                print(f"  see why: loka logs {name} -n {cluster.namespace}", file=out)
            return status
    raise CliError(
        f"{name} did not finish within {timeout:.0f}s; last seen: {describe_line(status)}",
        hint=f"it keeps running; watch it with `loka status {name} -w -n {cluster.namespace}`",
    )


def status(
    cluster: Cluster,
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
        runs = cluster.list_runs(all_namespaces=all_namespaces)
        if output:
            print(dump({"apiVersion": "v1", "kind": "List", "items": runs}, output), file=out)
        elif not runs:
            where = "any namespace" if all_namespaces else f"namespace {cluster.namespace!r}"
            print(f"No TrainingRuns in {where}.", file=out)
        else:
            print(table(runs, all_namespaces=all_namespaces), file=out)
        return EXIT_OK
    if not watch:
        run = cluster.get_run(name)
        if output:
            print(dump(run, output), file=out)
        else:
            print(live_view(run, queue=queue_position(cluster, run)), file=out)
        return EXIT_OK
    return _watch(cluster, name, timeout=timeout, output=output, out=out)


def _watch(cluster: Cluster, name: str, *, timeout: float, output: str | None, out: TextIO) -> int:
    redraw = out.isatty() and output is None
    samples: list[tuple[float, int]] = []
    last = ""
    run: JSON = {}
    for run in cluster.watch_run(name, timeout=timeout):
        status = run.get("status") or {}
        if output:
            print(dump(run, output), file=out, flush=True)
        else:
            step = (status.get("progress") or {}).get("step")
            if step is not None and (not samples or samples[-1][1] != step):
                samples.append((time.monotonic(), step))
            rate = None
            if len(samples) >= 2 and samples[-1][1] > samples[0][1]:
                rate = (samples[-1][0] - samples[0][0]) / (samples[-1][1] - samples[0][1])
            view = live_view(run, queue=queue_position(cluster, run), observed_rate=rate)
            if view != last:
                print(("\x1b[H\x1b[2J" if redraw else ("\n" if last else "")) + view, file=out, flush=True)
                last = view
        if status.get("phase") in TERMINAL and status.get("observedGeneration") == run["metadata"].get("generation"):
            return EXIT_OK if status.get("phase") == "Succeeded" else EXIT_FAILED
    return EXIT_OK


def set_suspend(cluster: Cluster, name: str, suspend: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    run = cluster.get_run(name)
    phase = (run.get("status") or {}).get("phase")
    if phase in TERMINAL:
        raise usage(f"{name} is {phase}: a finished run cannot be {'suspended' if suspend else 'resumed'}")
    if bool((run.get("spec") or {}).get("suspend")) == suspend:
        print(f"trainingrun.loka.dev/{name} already {'suspended' if suspend else 'running (not suspended)'}", file=out)
        return EXIT_OK
    cluster.patch_run(name, {"spec": {"suspend": suspend}})
    what = "suspended: its Ray cluster is released; the next attempt resumes from the last checkpoint"
    print(f"trainingrun.loka.dev/{name} {what if suspend else 'resumed'}", file=out)
    return EXIT_OK


def delete(cluster: Cluster, name: str, *, wait: bool, timeout: float, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    cluster.get_run(name)
    cluster.delete_run(name)
    if wait:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                cluster.get_run(name)
            except CliError as error:
                if error.code == 3:
                    break
                raise
            time.sleep(0.5)
        else:
            raise CliError(f"{name} is still there after {timeout:.0f}s (a finalizer may hold it)")
    print(
        f'trainingrun.loka.dev "{name}" deleted (its RayJob and Ray cluster go with it; checkpoints stay in S3)',
        file=out,
    )
    return EXIT_OK
