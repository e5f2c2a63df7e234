"""`loka checkpoints NAME`: the run's complete checkpoints as the client library lists them, and a verified
download."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from loka_api.contract import MARKER_NAME
from loka_cli.errors import EXIT_OK
from loka_cli.views import dump
from loka_client import Client


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def show(client: Client, name: str, *, output: str | None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    found = client.checkpoints(name)
    if output:
        run = client.get(name)
        in_status = run.status.checkpoint.step if run.status.checkpoint else None
        listed: list[dict[str, Any]] = [
            {"step": c.step, "uri": c.uri, "files": c.files, "bytes": c.bytes, "created": c.created,
             "isLatest": c.latest, "inStatus": c.step == in_status}
            for c in found
        ]  # fmt: skip
        print(dump(listed, output), file=out)
        return EXIT_OK
    if not found:
        print(f"No complete checkpoints of {name} yet.", file=out)
        return EXIT_OK
    rows = [["STEP", "FILES", "SIZE", "CREATED", "", "URI"]]
    for c in found:
        rows.append([str(c.step), str(c.files), _size(c.bytes), c.created, MARKER_NAME if c.latest else "", c.uri])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
    return EXIT_OK


def download(client: Client, name: str, step: int, target: Path, out: TextIO | None = None) -> int:
    """Download step ``step`` into ``target/global_step_N``, every file verified against the manifest."""
    out = out or sys.stdout
    got = client.download(name, step, target)
    print(f"{got.path}  {got.files} files, {_size(got.bytes)}, every file's checksum verified", file=out)
    return EXIT_OK
