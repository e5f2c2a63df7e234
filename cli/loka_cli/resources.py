"""What `loka` does the same way for runs, Evaluations and RewardCycles (``loka_client.resources``): apply ``-f FILE``
and say what it did, list them, show one, follow one, wait for one, delete one. How each looks is its own module's
(``runs``, ``evaluations``, ``cycles``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, usage
from loka_cli.views import dump
from loka_client import CustomResources, FailedError, ObjectView, WaitTimeoutError
from loka_client.resources import parse_manifest

V = TypeVar("V", bound=ObjectView)


def resource_name(collection: CustomResources[V], name: str) -> str:
    """kubectl's name of one object: ``trainingrun.loka.dev/NAME``."""
    return f"{collection.kind.kind.lower()}.{collection.kind.group}/{name}"


def submit(
    collection: CustomResources[V], path: str, *, dry_run: bool, force_conflicts: bool = False, out: TextIO
) -> V:
    """Apply the object of its kind in ``path`` (``-`` for stdin), checked against the models first; say whether it
    was created, configured or only validated. Its namespace is the one later calls look in."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise usage(f"-f {path}: {error.strerror}") from error
    source = f"-f {path}"
    manifest = parse_manifest(text, source, collection.kind.kind)
    applied = collection.submit(manifest, dry_run=dry_run, force_conflicts=force_conflicts, source=source)
    collection.connection.use_namespace(applied.namespace)
    created = applied.metadata.generation == 1 and not applied.manifest.get("status")
    verb = "validated (server dry run)" if dry_run else ("created" if created else "configured")
    print(f"{resource_name(collection, applied.name)} {verb} in namespace {applied.namespace}", file=out, flush=True)
    return applied


def follow(collection: CustomResources[V], name: str, *, line: Callable[[V], str], timeout: float, out: TextIO) -> V:
    """One line each time ``line`` of the object changes, until it ends; returns it as it ended. WaitTimeoutError
    when it did not end within ``timeout`` seconds (it keeps going)."""
    started, last = time.monotonic(), ""
    seen: V | None = None
    for seen in collection.watch(name, timeout=timeout):
        now = line(seen)
        if now != last:
            print(f"  [{time.monotonic() - started:6.1f}s] {now}", file=out, flush=True)
            last = now
    if seen is None or not seen.finished:
        namespace = collection.connection.namespace
        raise WaitTimeoutError(
            f"{name} did not end within {timeout:.0f}s; last seen: {last}",
            seen,
            hint=f"it keeps going; follow it with `{collection.view.follow_command(name, namespace)}`",
        )
    return seen


def exit_code(seen: ObjectView) -> int:
    return EXIT_OK if seen.phase == "Succeeded" else EXIT_FAILED


def status(  # noqa: PLR0917 - what to list, how it looks, and how one is followed
    collection: CustomResources[V],
    name: str | None,
    command: str,
    table: Callable[[Sequence[V], bool], str],
    show: Callable[[V], str],
    watch: Callable[[str], int] | None,
    *,
    all_namespaces: bool,
    output: str | None,
    out: TextIO,
) -> int:
    """No name: the table of the namespace's (or every namespace's) objects. A name: that object, shown (or printed
    as JSON or YAML); with ``watch``, followed until it ends. ``command`` is the status command, for its usage."""
    if name is None:
        if watch is not None:
            raise usage(f"-w needs a {collection.view.NOUN} name", f"{command} NAME -w")
        listing(collection, table, all_namespaces=all_namespaces, output=output, out=out)
        return EXIT_OK
    if watch is not None:
        return watch(name)
    found = collection.get(name)
    print(dump(found.manifest, output) if output else show(found), file=out)
    return EXIT_OK


def listing(
    collection: CustomResources[V],
    table: Callable[[Sequence[V], bool], str],
    *,
    all_namespaces: bool,
    output: str | None,
    out: TextIO,
) -> None:
    """The objects of the namespace (or of every namespace): a table, a List as JSON or YAML, or a line saying none."""
    found = collection.list(all_namespaces=all_namespaces)
    if output:
        print(dump({"apiVersion": "v1", "kind": "List", "items": [v.manifest for v in found]}, output), file=out)
    elif not found:
        where = "any namespace" if all_namespaces else f"namespace {collection.connection.namespace!r}"
        print(f"No {collection.kind.kind}s in {where}.", file=out)
    else:
        print(table(found, all_namespaces), file=out)


def wait(collection: CustomResources[V], name: str, show: Callable[[V], str], *, timeout: float, out: TextIO) -> int:
    """Until the object ends: shown, exit 0 when it succeeded; shown with why, exit 1 when it failed; an error (exit 1,
    it keeps going) when ``timeout`` seconds passed first."""
    try:
        done = collection.wait(name, timeout=timeout)
    except FailedError as error:
        print(show(error.seen), file=out)  # type: ignore[arg-type]  # the collection's own kind
        print(error.message, file=out)
        return EXIT_FAILED
    except WaitTimeoutError as error:
        raise CliError(error.message, hint=error.hint) from error
    print(show(done), file=out)
    return EXIT_OK


def delete(collection: CustomResources[V], name: str, *, wait: bool, timeout: float, after: str, out: TextIO) -> int:
    """Delete the object (with ``wait``, until it is gone); ``after`` says what goes with it and what stays."""
    try:
        collection.delete(name, wait=wait, timeout=timeout)
    except WaitTimeoutError as error:
        raise CliError(error.message) from error
    print(f'{collection.kind.kind.lower()}.{collection.kind.group} "{name}" deleted ({after})', file=out)
    return EXIT_OK
