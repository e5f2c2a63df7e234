"""`loka dataset`: a task file to verl's train/validation parquet with the core's one builder, and an upload."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from loka_api.dataset import DatasetError, build_dataset
from loka_cli.errors import EXIT_OK, EXIT_USAGE, CliError, usage
from loka_cli.s3 import S3, S3Path


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
    destination = S3Path.parse(upload, "--upload") if upload else None
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
    if destination is None:
        return EXIT_OK
    s3 = S3(env)
    done: list[S3Path] = []
    try:
        for path in (summary.train, summary.validation):
            target = destination.join(path.name)
            s3.upload(path, target)
            done.append(target)
    except Exception as error:
        for target in done:  # all or nothing: a run must never train on a new train split with an old validation
            s3.delete(target)
        raise s3.explain(error, f"uploading to {destination}") from error
    for target in done:
        print(f"uploaded {target}", file=out)
    print(
        f"in a run: data: {{train: {done[0]}, validation: {done[1]}}}  (or `loka init NAME --data {destination}/`)",
        file=out,
    )
    return EXIT_OK
