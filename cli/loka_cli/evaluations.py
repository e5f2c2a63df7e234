"""`loka eval submit|status|wait|delete`: Evaluations as the client library returns them, printed like runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from loka_api.evaluation import EVALUATION_KIND, Evaluation, EvaluationPhase
from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, usage
from loka_cli.views import age, dump
from loka_client import Client, EvaluationFailedError, EvaluationView, WaitTimeoutError
from loka_client.runs import parse_manifest


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(evaluations: Sequence[Evaluation], *, all_namespaces: bool = False, now: datetime | None = None) -> str:
    """One line per Evaluation: the printer columns of `kubectl get evaluations`."""
    header = ["NAME", "PHASE", "RUN", "SAMPLES", "AGREEMENT", "PAIRS", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for evaluation in evaluations:
        status = evaluation.status
        row = [
            evaluation.metadata.name,
            status.phase or EvaluationPhase.PENDING,
            evaluation.spec.rollouts.from_run,
            "-" if status.samples_judged is None else str(status.samples_judged),
            "-" if status.agreement is None else f"{status.agreement:.2f}",
            "-" if status.preferences is None else str(status.preferences),
            age(evaluation.metadata.creation_timestamp, now),
        ]
        if all_namespaces:
            row.insert(0, evaluation.metadata.namespace)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def describe(evaluation: Evaluation) -> str:
    """One Evaluation: where it stands, its source, each judge's figures and where it wrote."""
    spec, status = evaluation.spec, evaluation.status
    phase = status.phase or EvaluationPhase.PENDING
    lines = [f"{evaluation.metadata.name}   {phase}   run {spec.rollouts.from_run} (steps {spec.rollouts.steps})"]
    if status.message:
        lines.append(f"  {status.message}")
    if status.samples is not None:
        judged = f"  samples   {status.samples_judged or 0} of {status.samples} judged"
        lines.append(judged + (f" (steps {', '.join(map(str, status.steps))})" if status.steps else ""))
    if status.judges:
        lines.append("  judges    NAME        JUDGED   PARSED   ERRORS   TOKENS")
        lines += [
            f"{'':12}{j.name:<10}  {j.judged:>6}   {_rate(j.parse_rate):>6}   {_rate(j.error_rate):>6}   {j.tokens:>6}"
            for j in status.judges
        ]
    if status.agreement is not None:
        lines.append(f"  agreement {status.agreement:.2f} (aggregate: {spec.aggregate})")
    if status.tokens is not None:
        lines.append(f"  tokens    {status.tokens}")
    if status.preferences is not None:
        lines.append(f"  pairs     {status.preferences} -> {status.preferences_uri or spec.output.uri}")
    if status.scores_uri:
        lines.append(f"  scores    {status.scores_uri}")
    if status.job:
        lines.append(f"  job       {status.job}")
    return "\n".join(lines)


def submit(client: Client, path: str, *, wait: bool, timeout: float, dry_run: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise usage(f"-f {path}: {error.strerror}") from error
    applied = client.evaluations.submit(parse_manifest(text, f"-f {path}", EVALUATION_KIND), dry_run=dry_run)
    created = applied.metadata.generation == 1 and not applied.manifest.get("status")
    verb = "validated (server dry run)" if dry_run else ("created" if created else "configured")
    print(f"evaluation.loka.dev/{applied.name} {verb} in namespace {applied.namespace}", file=out, flush=True)
    if not wait or dry_run:
        return EXIT_OK
    return follow(client, applied.name, applied.namespace, timeout=timeout, out=out)


def follow(client: Client, name: str, namespace: str, *, timeout: float, out: TextIO) -> int:
    """One line each time the phase or the figures change; the description at the end."""
    started, last = time.monotonic(), ""
    seen: EvaluationView | None = None
    for seen in client.evaluations.watch(name, namespace, timeout=timeout):
        status = seen.status
        line = f"{seen.phase}" + (f": {status.message}" if status.message else "")
        if status.samples_judged is not None:
            line += f" ({status.samples_judged} judged, {status.preferences or 0} pairs)"
        if line != last:
            print(f"  [{time.monotonic() - started:6.1f}s] {line}", file=out, flush=True)
            last = line
    if seen is None or not seen.finished:
        raise CliError(f"{name} did not end within {timeout:.0f}s; last seen: {last}")
    print(describe(seen), file=out)
    return EXIT_OK if seen.phase == EvaluationPhase.SUCCEEDED else EXIT_FAILED


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
            raise usage("-w needs an Evaluation name", "loka eval status NAME -w")
        found = client.evaluations.list(all_namespaces=all_namespaces)
        if output:
            print(dump({"apiVersion": "v1", "kind": "List", "items": [e.manifest for e in found]}, output), file=out)
        elif not found:
            where = "any namespace" if all_namespaces else f"namespace {client.namespace!r}"
            print(f"No Evaluations in {where}.", file=out)
        else:
            print(table(found, all_namespaces=all_namespaces), file=out)
        return EXIT_OK
    if watch:
        return follow(client, name, client.namespace, timeout=timeout, out=out)
    evaluation = client.evaluations.get(name)
    print(dump(evaluation.manifest, output) if output else describe(evaluation), file=out)
    return EXIT_OK


def wait(client: Client, name: str, *, timeout: float, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        done = client.evaluations.wait(name, timeout=timeout)
    except EvaluationFailedError as error:
        print(error.message, file=out)
        return EXIT_FAILED
    except WaitTimeoutError as error:
        raise CliError(error.message) from error
    print(describe(done), file=out)
    return EXIT_OK


def delete(client: Client, name: str, *, wait: bool, timeout: float, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        client.evaluations.delete(name, wait=wait, timeout=timeout)
    except WaitTimeoutError as error:
        raise CliError(error.message) from error
    print(f'evaluation.loka.dev "{name}" deleted (its Job goes with it; scores and pairs stay in S3)', file=out)
    return EXIT_OK
