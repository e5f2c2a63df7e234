"""`loka dataset`: a task file to verl's train/validation parquet with the core's one builder, and an upload."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import yaml

from loka_api import TrainingRun
from loka_api.dataset import DatasetError, build_dataset
from loka_api.environments import allowed_host_patterns
from loka_cli.errors import EXIT_OK, EXIT_USAGE, CliError, usage
from loka_client.storage import upload_files


def run_hosts(run_file: Path | None) -> list[str]:
    """The hosts a run's tasks may name: its spec.environment's allowedHosts and its servers' own hosts."""
    if run_file is None:
        return []
    try:
        run = TrainingRun.model_validate(yaml.safe_load(run_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise usage(f"--run {run_file}: not a TrainingRun ({str(error).splitlines()[0]})") from error
    if run.spec.environment is None:
        raise usage(f"--run {run_file}: the run has no spec.environment", "use --allowed-host, or add the environment")
    meta = run.metadata
    return allowed_host_patterns(run.spec.environment, run=meta.name or "*", namespace=meta.namespace or "*")


def dataset(
    tasks: Path,
    output: Path,
    *,
    validation_fraction: float,
    seed: str,
    data_source: str,
    ability: str,
    upload: str | None,
    env: Mapping[str, str],
    allowed_hosts: Sequence[str] | None = None,
    run_file: Path | None = None,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    if not tasks.is_file():
        raise usage(f"{tasks}: no such file", "give the path of a .jsonl or .json task file")
    if upload is not None and (not upload.startswith("s3://") or not upload.removeprefix("s3://").split("/", 1)[0]):
        raise usage(f"--upload: {upload!r} is not an s3:// URI", "write it as s3://bucket/prefix/")
    hosts = None if allowed_hosts is None and run_file is None else [*(allowed_hosts or []), *run_hosts(run_file)]
    try:
        summary = build_dataset(
            tasks,
            output,
            validation_fraction=validation_fraction,
            seed=seed,
            data_source=data_source,
            ability=ability,
            allowed_hosts=hosts,
        )
    except DatasetError as error:
        listed = "\n".join(error.problems)
        raise CliError(
            f"{len(error.problems)} bad row(s); nothing written to {output}:\n{listed}",
            hint="fix the rows above and run again",
            code=EXIT_USAGE,
        ) from error
    except ValueError as error:
        raise usage(str(error)) from error
    print(f"{summary.train}  {summary.train_rows} rows", file=out)
    print(f"{summary.validation}  {summary.validation_rows} rows", file=out)
    if upload is None:
        return EXIT_OK
    done = upload_files([summary.train, summary.validation], upload, settings=env)
    for target in done:
        print(f"uploaded {target}", file=out)
    destination = upload.rstrip("/")
    print(
        f"in a run: data: {{train: {done[0]}, validation: {done[1]}}}  (or `loka init NAME --data {destination}/`)",
        file=out,
    )
    return EXIT_OK
