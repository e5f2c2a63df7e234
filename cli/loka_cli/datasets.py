"""`loka dataset`: a task file to verl's train/validation parquet with the core's one builder, and an upload."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from loka_api.dataset import DatasetError, build_dataset
from loka_cli.errors import EXIT_OK, EXIT_USAGE, CliError, usage
from loka_client.storage import upload_files


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
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    if not tasks.is_file():
        raise usage(f"{tasks}: no such file", "give the path of a .jsonl or .json task file")
    if upload is not None and (not upload.startswith("s3://") or not upload.removeprefix("s3://").split("/", 1)[0]):
        raise usage(f"--upload: {upload!r} is not an s3:// URI", "write it as s3://bucket/prefix/")
    try:
        summary = build_dataset(
            tasks, output, validation_fraction=validation_fraction, seed=seed, data_source=data_source, ability=ability
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
