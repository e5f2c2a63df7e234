"""A run's checkpoints from where the client runs: listed and downloaded through the core's reader
(``loka_api.checkpoints``) over the one S3 wrapper (``loka_api.storage``), with S3 errors as ``StorageError``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loka_api.contract import MANIFEST_NAME, step_folder
from loka_client.errors import CheckpointMismatchError, CheckpointNotFoundError, InvalidInputError
from loka_client.storage import object_store, talking_to_s3

if TYPE_CHECKING:
    from loka_api.checkpoints import Checkpoint, CheckpointIndex
    from loka_api.storage import ObjectStore
    from loka_client.runs import Run


@dataclass(frozen=True)
class DownloadedCheckpoint:
    """A checkpoint on this machine: every file verified against its manifest (kept beside them)."""

    path: Path
    step: int
    files: int
    bytes: int


class RunStorage:
    """S3 as this machine reaches it: ``settings`` (the AWS variables of a ``.env``, else the environment) and an
    endpoint (``endpoint``, else the settings' ``AWS_ENDPOINT_URL``, else the run's ``spec.storage.endpoint``: how
    the cluster reaches S3, which may differ from how this machine does).
    """

    def __init__(self, settings: Mapping[str, str], endpoint: str | None = None) -> None:
        self.settings = settings
        self.endpoint = endpoint

    def index(self, run: Run) -> CheckpointIndex[ObjectStore]:
        from loka_api.checkpoints import CheckpointIndex

        if run.spec.checkpoints is None:
            raise CheckpointNotFoundError(f"{run.name} saves no checkpoints (spec.checkpoints is not set)")
        endpoint = self.endpoint or self.settings.get("AWS_ENDPOINT_URL") or None
        if endpoint is None and run.spec.storage is not None:
            endpoint = run.spec.storage.endpoint
        store = object_store(self.settings, endpoint)
        try:
            prefix = CheckpointIndex.run_prefix(
                run.spec.checkpoints.uri, namespace=run.namespace, run_name=run.name, uid=run.metadata.uid
            )
        except ValueError as error:
            raise InvalidInputError(f"checkpoints.uri of {run.name}: {error}") from error
        return CheckpointIndex(store, prefix)

    def checkpoints(self, run: Run) -> list[Checkpoint]:
        index = self.index(run)
        return talking_to_s3(index.store, f"listing checkpoints under {index.prefix}", index.checkpoints)

    def download(self, run: Run, step: int, target: Path) -> DownloadedCheckpoint:
        from loka_api.checkpoints import CheckpointError
        from loka_api.checkpoints import CheckpointMismatchError as Mismatch

        index = self.index(run)
        complete = talking_to_s3(index.store, f"listing checkpoints under {index.prefix}", index.complete_steps)
        if step not in complete:
            steps = ", ".join(str(s) for s in complete) or "none"
            raise CheckpointNotFoundError(
                f"{run.name} has no complete checkpoint at step {step}", hint=f"complete steps: {steps}"
            )
        final = target / step_folder(step)
        if final.exists():
            raise InvalidInputError(f"{final} already exists", hint="remove it or choose another folder")
        partial = target / f".{step_folder(step)}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        source = index.step_uri(step)
        with _removed_on_failure(partial):
            try:
                manifest = talking_to_s3(index.store, f"downloading {source}", lambda: index.fetch(step, partial))
            except Mismatch as error:
                raise CheckpointMismatchError(
                    f"{error.expected.path} does not match the manifest ({error.difference}); nothing kept",
                    hint="run the download again; if it repeats, the checkpoint is damaged in S3",
                ) from error
            except CheckpointError as error:  # pruned or damaged meanwhile
                raise CheckpointNotFoundError(str(error)) from error
            (partial / MANIFEST_NAME).write_bytes(manifest.to_json())
        partial.replace(final)
        return DownloadedCheckpoint(final, step, len(manifest.files), manifest.total_bytes)


@contextmanager
def _removed_on_failure(folder: Path) -> Iterator[None]:
    """A failed or interrupted download leaves nothing that looks complete."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
