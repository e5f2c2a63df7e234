"""verl's ``trainer.checkpoint_callback_class``: upload each ``global_step_N`` to S3, then move the marker.

verl calls ``on_save`` on its driver (the TaskRunner actor) after writing the checkpoint and its tracker file;
an exception here aborts training, which is what a checkpoint that could not be stored deserves, and what an
attempt replaced by a newer one gets (WriterFencedError: it may no longer move the marker). Ranks write shards
to their own node's disk, so every Ray node uploads what it holds and then drops its older local copies
(loka_trainer.nodes).
"""

from __future__ import annotations

import logging
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from loka_trainer.checkpoints import CheckpointRecord, CheckpointStore, merge_node_files
from loka_trainer.nodes import on_nodes, upload_from_node
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


class S3CheckpointCallback(CheckpointCallback):
    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)  # type: ignore[no-untyped-call]
        settings = CallbackSettings.from_env()
        self.checkpoints: CheckpointStore | None = None
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
        del trainer, kwargs
        if self.checkpoints is None:
            return
        if async_save:
            # Shards may still be in flight: uploading now could store a torn checkpoint.
            log.warning("async checkpoint save at step %d is not uploaded (turn async_save off)", global_step)
            return
        # status.checkpoint follows from the marker: `loka-trainer run` reads it (only the head has API access).
        upload_from_every_node(self.checkpoints, global_step, checkpoint_dir)
