"""`loka checkpoints NAME`: the complete checkpoints of a run (status and S3), and a verified download."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from loka_api.contract import MANIFEST_NAME, MARKER_NAME, STEP_FOLDER, run_checkpoint_prefix, step_folder
from loka_api.manifest import CheckpointManifest, sha256_file
from loka_cli.cluster import Cluster
from loka_cli.errors import EXIT_OK, CliError, not_found, usage
from loka_cli.s3 import S3, S3Path
from loka_cli.views import dump

JSON = dict[str, Any]


def _store(cluster: Cluster, name: str, env: Mapping[str, str], endpoint: str | None) -> tuple[JSON, S3, S3Path]:
    run = cluster.get_run(name)
    spec = run.get("spec") or {}
    if not spec.get("checkpoints"):
        raise not_found(f"{name} saves no checkpoints (spec.checkpoints is not set)")
    uid = (run.get("metadata") or {}).get("uid", "")
    prefix = S3Path.parse(
        run_checkpoint_prefix(spec["checkpoints"]["uri"], cluster.namespace, name, uid), "checkpoints.uri"
    )
    # This machine's endpoint (.env) first: the spec's is how the cluster reaches S3, which may differ.
    return run, S3(env, endpoint), prefix


def list_checkpoints(cluster: Cluster, name: str, env: Mapping[str, str], *, endpoint: str | None) -> list[JSON]:
    run, s3, prefix = _store(cluster, name, env, endpoint)
    if s3.endpoint is None and (run["spec"].get("storage") or {}).get("endpoint"):
        s3 = S3(env, run["spec"]["storage"]["endpoint"])
    try:
        steps = sorted(int(m.group(1)) for folder in s3.folders(prefix) if (m := STEP_FOLDER.match(folder)))
        marker_raw = s3.get(prefix.join(MARKER_NAME))
        found: list[JSON] = []
        for step in steps:
            raw = s3.get(prefix.join(step_folder(step), MANIFEST_NAME))
            if raw is None:
                continue  # incomplete: being uploaded, or abandoned by a stopped attempt
            manifest = CheckpointManifest.from_json(raw)
            found.append({"step": step, "uri": str(prefix.join(step_folder(step))), "files": len(manifest.files),
                          "bytes": manifest.total_bytes, "created": manifest.created})  # fmt: skip
    except CliError:
        raise
    except Exception as error:
        raise s3.explain(error, f"listing checkpoints under {prefix}") from error
    marker = json.loads(marker_raw).get("step") if marker_raw else None
    in_status = ((run.get("status") or {}).get("checkpoint") or {}).get("step")
    for entry in found:
        entry["isLatest"] = entry["step"] == marker
        entry["inStatus"] = entry["step"] == in_status
    return found


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def show(cluster: Cluster, name: str, env: Mapping[str, str], *, endpoint: str | None, output: str | None,
         out: TextIO | None = None) -> int:  # fmt: skip
    out = out or sys.stdout
    found = list_checkpoints(cluster, name, env, endpoint=endpoint)
    if output:
        print(dump(found, output), file=out)
        return EXIT_OK
    if not found:
        print(f"No complete checkpoints of {name} yet.", file=out)
        return EXIT_OK
    rows = [["STEP", "FILES", "SIZE", "CREATED", "", "URI"]]
    for entry in found:
        mark = MARKER_NAME if entry["isLatest"] else ""
        rows.append(
            [str(entry["step"]), str(entry["files"]), _size(entry["bytes"]), entry["created"], mark, entry["uri"]]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    return EXIT_OK


def download(cluster: Cluster, name: str, step: int, target: Path, env: Mapping[str, str], *, endpoint: str | None,
             out: TextIO | None = None) -> int:  # fmt: skip
    """Download step ``step`` into ``target/global_step_N``, verifying every file against the manifest; the folder
    appears only once every file matched (a failed or interrupted download leaves nothing that looks complete)."""
    out = out or sys.stdout
    found = {entry["step"]: entry for entry in list_checkpoints(cluster, name, env, endpoint=endpoint)}
    if step not in found:
        steps = ", ".join(str(s) for s in sorted(found)) or "none"
        raise not_found(f"{name} has no complete checkpoint at step {step}", hint=f"complete steps: {steps}")
    run, s3, prefix = _store(cluster, name, env, endpoint)
    if s3.endpoint is None and (run["spec"].get("storage") or {}).get("endpoint"):
        s3 = S3(env, run["spec"]["storage"]["endpoint"])
    final = target / step_folder(step)
    if final.exists():
        raise usage(f"{final} already exists", "remove it or choose another folder")
    partial = target / f".{step_folder(step)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    source = prefix.join(step_folder(step))
    try:
        raw = s3.get(source.join(MANIFEST_NAME))
        if raw is None:
            raise not_found(f"checkpoint {source} lost its manifest (pruned meanwhile?)")
        manifest = CheckpointManifest.from_json(raw)
        for entry in manifest.files:
            path = partial / entry.path
            if not path.resolve().is_relative_to(partial.resolve()):
                raise CliError(f"the manifest of {source} names a path outside the checkpoint: {entry.path}")
            s3.download(source.join(entry.path), path)
            size, digest = path.stat().st_size, sha256_file(path)
            if size != entry.size or digest != entry.sha256:
                raise CliError(
                    f"{entry.path} does not match the manifest (size {size} vs {entry.size}, "
                    f"sha256 {digest[:12]}… vs {entry.sha256[:12]}…); nothing kept",
                    hint="run the download again; if it repeats, the checkpoint is damaged in S3",
                )
    except CliError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except Exception as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise s3.explain(error, f"downloading {source}") from error
    (partial / MANIFEST_NAME).write_bytes(raw)
    partial.replace(final)
    print(f"{final}  {len(manifest.files)} files, {_size(manifest.total_bytes)}, every sha256 verified", file=out)
    return EXIT_OK
