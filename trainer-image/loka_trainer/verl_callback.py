"""verl's ``trainer.checkpoint_callback_class``: upload each ``global_step_N`` to S3, then move the marker.

verl calls ``on_save`` on its driver (the TaskRunner actor) after writing the checkpoint and its tracker file;
an exception here aborts training, which is what a checkpoint that could not be stored deserves, and what an
attempt replaced by a newer one gets (WriterFencedError: it may no longer move the marker). Ranks write shards
to their own node's disk, so every Ray node uploads what it holds and then drops its older local copies
(loka_trainer.nodes).

The GPUs do not wait for S3: ``on_save`` hard-links the checkpoint into a snapshot on every node and uploads
it in the background while training goes on. One upload is in flight at most, and none is lost:

- at every step end (``on_step_end``, which ``loka_trainer.verl_driver`` hooks into verl's trainer) a finished
  upload's failure is raised, so a fenced writer stops at the next step, not at the next save;
- the next save waits for it; the last step's checkpoint is uploaded before ``on_save`` returns;
- every way out of verl's TaskRunner (an exception right after a save, the end) waits for it
  (``finish_uploads_in_flight``), and `loka-trainer run` waits for it before it stops verl
  (``loka_trainer.stop_handshake``).

On request (a preemption or a suspension, through the stop handshake) the step in flight ends with a save,
uploaded before the step returns; the handshake then names the step marked, or why there is none.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from loka_api.checkpoints import CheckpointRecord
from loka_api.contract import ENV_STOP_HANDSHAKE
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore, merge_node_files
from loka_trainer.nodes import (
    UPLOAD_SNAPSHOT_FOLDER,
    link_checkpoint_on_node,
    on_nodes,
    remove_on_node,
    upload_from_node,
)
from loka_trainer.settings import CallbackSettings
from loka_trainer.stop_handshake import StopHandshake

log = logging.getLogger(__name__)
# How long verl's step loop waits to be stopped once it answered the save on the way out (the trainer stops it within
# a poll and its 10 s grace: engines.verl.STOP_GRACE_S).
HOLD_AFTER_SAVE_S = 300.0

# The callbacks verl built in this process: every way out of the TaskRunner waits for their uploads.
_CALLBACKS: list[S3CheckpointCallback] = []


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

    def __init__(
        self, checkpoints: CheckpointStore, step: int, snapshot: str, handshake: StopHandshake | None = None
    ) -> None:
        self.step = step
        self.error: BaseException | None = None
        self._handshake = handshake
        if handshake is not None:
            handshake.mark_uploading(step)
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
        except BaseException as error:  # handed to the training thread at its next step end
            self.error = error
        finally:
            if self._handshake is not None:
                self._handshake.mark_uploading(None)

    def done(self) -> bool:
        return not self._thread.is_alive()

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
        self._last_saved: int | None = None
        self._stop_answered = False
        handshake = os.environ.get(ENV_STOP_HANDSHAKE)
        self.handshake = StopHandshake(Path(handshake)) if handshake else None
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
        _CALLBACKS.append(self)

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
        self._last_saved = global_step
        last = trainer is None or global_step >= int(getattr(trainer, "total_training_steps", global_step))
        if last or self._stop_requested() is not None:  # verl's process ends right after: upload before returning
            upload_from_every_node(self.checkpoints, global_step, checkpoint_dir)
            log.info("uploaded checkpoint step %d in %.1f s", global_step, time.monotonic() - started - waited)
            return
        snapshot = str(Path(checkpoint_dir).parent / UPLOAD_SNAPSHOT_FOLDER / Path(checkpoint_dir).name)
        link_checkpoint_on_node(checkpoint_dir, snapshot)  # here without a Ray task: one node needs none
        on_nodes(link_checkpoint_on_node, checkpoint_dir, snapshot, skip_current=True)
        self._upload = BackgroundUpload(self.checkpoints, global_step, snapshot, self.handshake)
        log.info("checkpoint step %d: training goes on after %.2f s", global_step, time.monotonic() - started)

    def on_step_end(self, trainer: Any) -> None:
        """At the end of every step: raise a finished upload's failure now (a fenced writer stops here, not a whole
        interval later), and save the step if the trainer asked for one before it stops verl.
        """
        if self.checkpoints is None:
            return
        upload = self._upload
        if upload is not None and upload.done():
            self.wait_for_upload()
        reason = self._stop_requested()
        if reason is None or self._stop_answered or self.handshake is None:
            return
        self._stop_answered = True
        step = int(trainer.global_steps)
        started = time.monotonic()
        log.info("%s: saving step %d before the stop", reason, step)
        try:
            if self._last_saved != step:
                trainer._save_checkpoint()  # verl's own save; it calls on_save, which uploads before returning
            self.wait_for_upload()
        except BaseException as error:
            self.handshake.mark_failed(f"the save of step {step} failed: {type(error).__name__}: {error}")
            raise
        self.handshake.mark_saved(step)
        log.info("step %d saved and marked %.1f s after the stop request", step, time.monotonic() - started)
        hold_until_stopped(step)

    def _stop_requested(self) -> str | None:
        return None if self.handshake is None else self.handshake.save_requested()

    def wait_for_upload(self) -> None:
        """Block until the upload in flight (if any) is stored; raise its failure."""
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.wait()

    def finish(self) -> None:
        """Wait for the upload in flight on a way out; its failure is logged (the way out carries its own)."""
        try:
            self.wait_for_upload()
        except Exception as error:
            log.error("%s", error)


def hold_until_stopped(step: int) -> None:
    """The save on the way out is answered: the trainer stops verl next (its driver, then Ray the TaskRunner's actor,
    which can take seconds on a busy node). Another step meanwhile would train, and at a periodic step save and mark,
    past the checkpoint the trainer's closing message names. So the loop waits here to be stopped; only if nothing
    stopped it after HOLD_AFTER_SAVE_S (far longer than the trainer takes to stop it) does it train on."""
    time.sleep(HOLD_AFTER_SAVE_S)
    log.warning(
        "nothing stopped verl %.0f s after the save of step %d on the way out: training goes on",
        HOLD_AFTER_SAVE_S,
        step,
    )


def finish_uploads_in_flight() -> None:
    """Every way out of verl's TaskRunner: no upload that began is dropped with the process."""
    for callback in list(_CALLBACKS):
        callback.finish()


def on_step_end(trainer: Any) -> None:
    """What verl's trainer does at the end of each step with Loka's hook in place (``with_step_end_hook``)."""
    callback = getattr(trainer, "checkpoint_callback", None)
    if isinstance(callback, S3CheckpointCallback):
        callback.on_step_end(trainer)


def with_step_end_hook(trainer_class: type) -> type:
    """verl's trainer class, calling ``on_step_end`` after its own at the end of each step."""

    class LokaTrainer(trainer_class):  # type: ignore[misc]
        def on_step_end(self) -> None:
            super().on_step_end()
            on_step_end(self)

    LokaTrainer.__name__ = LokaTrainer.__qualname__ = f"Loka{trainer_class.__name__}"
    return LokaTrainer


def hook_verl_trainer() -> None:
    """Make verl's v1 PPO trainers (picked by ``get_trainer_cls`` inside its TaskRunner) call ``on_step_end``."""
    try:
        from verl.trainer.ppo import v1
    except ImportError as error:  # verl's legacy trainer, or a verl without v1: saves still go up, at save time
        log.warning("verl's v1 trainer is not importable (%s): no check of uploads and no save at step end", error)
        return
    pick = v1.get_trainer_cls
    if getattr(pick, "loka_hooked", False):
        return

    def get_trainer_cls(name: str) -> type:
        return with_step_end_hook(pick(name))

    get_trainer_cls.loka_hooked = True  # type: ignore[attr-defined]
    v1.get_trainer_cls = get_trainer_cls
