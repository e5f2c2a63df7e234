"""verl's ``trainer.checkpoint_callback_class``: upload each ``global_step_N`` to S3, then move the marker.

verl calls ``on_save`` on its driver (the TaskRunner actor) after writing the checkpoint and its tracker file;
an exception here aborts training, which is what a checkpoint that could not be stored deserves, and what an
attempt replaced by a newer one gets (WriterFencedError: it may no longer move the marker). Ranks write shards
to their own node's disk, so every Ray node uploads what it holds and then drops its older local copies
(loka_trainer.nodes).

The GPUs do not wait for S3: ``on_save`` hard-links the checkpoint into a snapshot on every node and uploads
it in the background while training goes on. One upload is in flight at most (the next save waits for it, and
raises its failure), and the last step's checkpoint is uploaded before ``on_save`` returns, since verl's
process ends right after it. A stop kills the upload before its commit: the marker then names the previous one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from loka_trainer.checkpoints import CheckpointRecord, CheckpointStore, merge_node_files
from loka_trainer.nodes import (
    UPLOAD_SNAPSHOT_FOLDER,
    link_checkpoint_on_node,
    on_nodes,
    remove_on_node,
    upload_from_node,
)
from loka_trainer.settings import CallbackSettings
from loka_trainer.storage import ObjectStore, S3Uri

log = logging.getLogger(__name__)


def upload_from_every_node(checkpoints: CheckpointStore, step: int, checkpoint_dir: str) -> CheckpointRecord:
    """Each Ray node uploads the shards it holds; the manifest lists them all; only then does the marker move."""
    if checkpoints.writer is None:
        msg = "the checkpoint callback needs the attempt that writes (LOKA_CHECKPOINT_WRITER)"
        raise ValueError(msg)
    checkpoints.begin(step)
    per_node = on_nodes(upload_from_node, str(checkpoints.prefix), checkpoints.writer.to_env(), step, checkpoint_dir)
    return checkpoints.commit(step, merge_node_files(per_node))


class BackgroundUpload:
    """One checkpoint's upload from its snapshot, on a thread; ``wait`` re-raises its failure."""

    def __init__(self, checkpoints: CheckpointStore, step: int, snapshot: str) -> None:
        self.step = step
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(checkpoints, snapshot), name=f"upload-step-{step}", daemon=True
        )
        self._thread.start()

    def _run(self, checkpoints: CheckpointStore, snapshot: str) -> None:
        started = time.monotonic()
        try:
            upload_from_every_node(checkpoints, self.step, snapshot)
            on_nodes(remove_on_node, snapshot)
            log.info("uploaded checkpoint step %d in the background in %.1f s", self.step, time.monotonic() - started)
        except BaseException as error:  # handed to the training thread at the next save
            self.error = error

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            msg = f"the upload of checkpoint step {self.step} failed: {self.error}"
            raise RuntimeError(msg) from self.error


class S3CheckpointCallback(CheckpointCallback):
    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)  # type: ignore[no-untyped-call]
        settings = CallbackSettings.from_env()
        self.checkpoints: CheckpointStore | None = None
        self._upload: BackgroundUpload | None = None
        if settings is None:
            log.warning("LOKA_CHECKPOINT_PREFIX is not set: checkpoints stay on local disk only")
            return
        self.checkpoints = CheckpointStore(
            ObjectStore(),
            S3Uri.parse(settings.prefix),
            keep=settings.keep,
            writer=settings.writer,
            run_uid=settings.run_uid,
        )

    def on_save(
        self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any
    ) -> None:
        del kwargs
        if self.checkpoints is None:
            return
        if async_save:
            # Shards may still be in flight: uploading now could store a torn checkpoint.
            log.warning("async checkpoint save at step %d is not uploaded (turn async_save off)", global_step)
            return
        # status.checkpoint follows from the marker: `loka-trainer run` reads it (only the head has API access).
        started = time.monotonic()
        self.wait_for_upload()
        waited = time.monotonic() - started
        if waited > 0.1:
            log.info("checkpoint step %d waited %.1f s for the previous upload", global_step, waited)
        last = trainer is None or global_step >= int(getattr(trainer, "total_training_steps", global_step))
        if last:
            upload_from_every_node(self.checkpoints, global_step, checkpoint_dir)
            log.info("uploaded checkpoint step %d in %.1f s", global_step, time.monotonic() - started - waited)
            return
        snapshot = str(Path(checkpoint_dir).parent / UPLOAD_SNAPSHOT_FOLDER / Path(checkpoint_dir).name)
        link_checkpoint_on_node(checkpoint_dir, snapshot)  # here without a Ray task: one node needs none
        on_nodes(link_checkpoint_on_node, checkpoint_dir, snapshot, skip_current=True)
        self._upload = BackgroundUpload(self.checkpoints, global_step, snapshot)
        log.info("checkpoint step %d: training goes on after %.2f s", global_step, time.monotonic() - started)

    def wait_for_upload(self) -> None:
        """Block until the upload in flight (if any) is stored; raise its failure."""
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.wait()
