"""What `loka` does the same way for runs, Evaluations and RewardCycles (``loka_client.resources``): apply ``-f FILE``
and say what it did, list them, show one, follow one, wait for one, delete one. How each looks is its own module's
(``runs``, ``evaluations``, ``cycles``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TextIO, TypeVar

from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, usage
from loka_cli.views import dump
from loka_client import Client, CustomResources, FailedError, ObjectView, WaitTimeoutError
from loka_client.resources import parse_manifest

V = TypeVar("V", bound=ObjectView)


@dataclass(frozen=True)
class Printer(Generic[V]):
    """How `loka` reaches one kind's objects and prints them."""

    objects: Callable[[Client], CustomResources[V]]
    command: str  # its status command, `loka eval status`
    table: Callable[[Sequence[V], bool], str]  # the objects, all namespaces or not
    describe: Callable[[Client, V], str]  # one object, shown
    line: Callable[[V], str]  # the line that changes as it moves, printed while it is followed
    ended: Callable[[Client, V], str | None]  # what is printed once a followed one ended
    deleted: str  # what goes with one that is deleted, and what stays


def apply(
    client: Client, printer: Printer[V], path: str, *, dry_run: bool, force_conflicts: bool = False, out: TextIO
) -> V:
    """Apply the object of its kind in ``path`` (``-`` for stdin), checked against the models first; say whether it
    was created, configured or only validated. Its namespace is the one later calls look in."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise usage(f"-f {path}: {error.strerror}") from error
    objects, source = printer.objects(client), f"-f {path}"
    manifest = parse_manifest(text, source, objects.kind.kind)
    applied = objects.submit(manifest, dry_run=dry_run, force_conflicts=force_conflicts, source=source)
    client.connection.use_namespace(applied.namespace)
    created = applied.metadata.generation == 1 and not applied.manifest.get("status")
    verb = "validated (server dry run)" if dry_run else ("created" if created else "configured")
    kind = objects.kind
    print(
        f"{kind.kind.lower()}.{kind.group}/{applied.name} {verb} in namespace {applied.namespace}", file=out, flush=True
    )
    return applied


def submit(
    client: Client,
    printer: Printer[V],
    path: str,
    *,
    wait: bool,
    timeout: float,
    dry_run: bool,
    force_conflicts: bool = False,
    out: TextIO | None = None,
) -> int:
    """``apply``; with ``wait``, followed to its end (exit 0 when it succeeded)."""
    out = out or sys.stdout
    applied = apply(client, printer, path, dry_run=dry_run, force_conflicts=force_conflicts, out=out)
    if not wait or dry_run:
        return EXIT_OK
    return follow_to_end(client, printer, applied.name, timeout=timeout, out=out)


def follow(client: Client, printer: Printer[V], name: str, *, timeout: float, out: TextIO) -> V:
    """One line each time ``printer.line`` of the object changes, until it ends; returns it as it ended.
    WaitTimeoutError when it did not end within ``timeout`` seconds (it keeps going)."""
    started, last = time.monotonic(), ""
    seen: V | None = None
    objects = printer.objects(client)
    for seen in objects.watch(name, timeout=timeout):
        now = printer.line(seen)
        if now != last:
            print(f"  [{time.monotonic() - started:6.1f}s] {now}", file=out, flush=True)
            last = now
    if seen is None or not seen.finished:
        raise WaitTimeoutError(
            f"{name} did not end within {timeout:.0f}s; last seen: {last}",
            seen,
            hint=f"it keeps going; follow it with `{objects.view.follow_command(name, client.namespace)}`",
        )
    return seen


def follow_to_end(client: Client, printer: Printer[V], name: str, *, timeout: float, out: TextIO) -> int:
    """``follow``, then what ``printer.ended`` says of it; exit 0 when it succeeded, 1 when it failed."""
    seen = follow(client, printer, name, timeout=timeout, out=out)
    if (said := printer.ended(client, seen)) is not None:
        print(said, file=out)
    return exit_code(seen)


def exit_code(seen: ObjectView) -> int:
    return EXIT_OK if seen.phase == "Succeeded" else EXIT_FAILED


def status(
    client: Client,
    printer: Printer[V],
    name: str | None,
    *,
    watch: bool,
    all_namespaces: bool,
    output: str | None,
    timeout: float,
    out: TextIO | None = None,
    watcher: Callable[[str], int] | None = None,
) -> int:
    """No name: the table of the namespace's (or every namespace's) objects. A name: that object, described (or
    printed as JSON or YAML); with ``watch``, followed until it ends (by ``watcher`` when given)."""
    out = out or sys.stdout
    if name is None:
        if watch:
            raise usage(f"-w needs a {printer.objects(client).view.NOUN} name", f"{printer.command} NAME -w")
        return listing(client, printer, all_namespaces=all_namespaces, output=output, out=out)
    if watch:
        return watcher(name) if watcher else follow_to_end(client, printer, name, timeout=timeout, out=out)
    found = printer.objects(client).get(name)
    print(dump(found.manifest, output) if output else printer.describe(client, found), file=out)
    return EXIT_OK


def listing(
    client: Client, printer: Printer[V], *, all_namespaces: bool, output: str | None, out: TextIO | None = None
) -> int:
    """The objects of the namespace (or of every namespace): a table, a List as JSON or YAML, or a line saying none."""
    out = out or sys.stdout
    objects = printer.objects(client)
    found = objects.list(all_namespaces=all_namespaces)
    if output:
        print(dump({"apiVersion": "v1", "kind": "List", "items": [v.manifest for v in found]}, output), file=out)
    elif not found:
        where = "any namespace" if all_namespaces else f"namespace {client.namespace!r}"
        print(f"No {objects.kind.kind}s in {where}.", file=out)
    else:
        print(printer.table(found, all_namespaces), file=out)
    return EXIT_OK


def wait(client: Client, printer: Printer[V], name: str, *, timeout: float, out: TextIO | None = None) -> int:
    """Until the object ends: described, exit 0 when it succeeded; described with why, exit 1 when it failed; an
    error (exit 1, it keeps going) when ``timeout`` seconds passed first."""
    out = out or sys.stdout
    try:
        done = printer.objects(client).wait(name, timeout=timeout)
    except FailedError as error:
        print(printer.describe(client, error.seen), file=out)  # type: ignore[arg-type]  # the printer's own kind
        print(error.message, file=out)
        return EXIT_FAILED
    except WaitTimeoutError as error:
        raise CliError(error.message, hint=error.hint) from error
    print(printer.describe(client, done), file=out)
    return EXIT_OK


def delete(
    client: Client, printer: Printer[V], name: str, *, wait: bool, timeout: float, out: TextIO | None = None
) -> int:
    """Delete the object (with ``wait``, until it is gone), saying what goes with it and what stays."""
    objects = printer.objects(client)
    try:
        objects.delete(name, wait=wait, timeout=timeout)
    except WaitTimeoutError as error:
        raise CliError(error.message) from error
    kind = objects.kind
    print(f'{kind.kind.lower()}.{kind.group} "{name}" deleted ({printer.deleted})', file=out or sys.stdout)
    return EXIT_OK
