"""Training engines behind one interface: the runner stages inputs and restores a checkpoint, an engine runs
the steps, writes per-step metrics in verl's file-logger format and hands each checkpoint to the store.

- ``verl``: the run's recipe's entry point (``loka_trainer.verl_driver`` around verl's ``main_ppo`` for RL,
  ``loka_trainer.verl_sft`` for SFT) on the Ray cluster (GPUs); checkpoints go up from verl's
  ``trainer.checkpoint_callback_class`` (SFT: the same callback, from its handler).
- ``trl``: the trainer the recipe names (TRL's GRPOTrainer or SFTTrainer) in this process (runs on CPU);
  checkpoints go up from a TrainerCallback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loka_api import TrainingRunSpec
from loka_api.checkpoints import CheckpointRecord
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.staging import StagedInputs
from loka_trainer.stop_handshake import StopHandshake


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint restored on local disk before the engine starts."""

    step: int
    folder: Path
    explicit: bool  # checkpoints.resume named it (resume_path) rather than auto picking the latest
    source: str = ""  # the S3 prefix holding global_step_<step> (another run's, for an explicit resume)


@dataclass
class SaveOnStop:
    """A stop (preemption, suspension) ends the step in flight with a saved, marked checkpoint when it can do so
    within ``window_s``; the engine records what became of it for the runner's closing message.
    """

    window_s: float
    handshake: StopHandshake  # verl's channel to its TaskRunner
    reason: str = "a stop request"
    abandon: threading.Event = field(default_factory=threading.Event)  # set once the window is over
    saved_step: int | None = None
    failure: str | None = None  # why no save happened (None and no saved step: the stop came before training)

    def outcome(self) -> str:
        """What the closing message says about the save on the way out ("" when nothing was tried)."""
        if self.saved_step is not None:
            return f"saved step {self.saved_step} before stopping"
        if self.failure is not None:
            return f"could not save before stopping ({self.failure})"
        return ""


@dataclass(frozen=True)
class EngineJob:
    spec: TrainingRunSpec
    run_name: str
    namespace: str
    inputs: StagedInputs
    work_dir: Path
    checkpoint_dir: Path
    metrics_file: Path
    checkpoints: CheckpointStore | None
    resume: ResumePoint | None
    on_checkpoint: Callable[[CheckpointRecord], None]
    stop: threading.Event
    wandb_mode: str
    source_uri: str | None = None  # status.source.uri: the checkpoint spec.model.fromRun resolved to
    save_on_stop: SaveOnStop | None = None  # None: a stop ends training at once (no checkpoints configured)


class Engine(Protocol):
    name: str
    uses_ray: bool  # the runner joins the Ray cluster around run(): staging other nodes, remote metrics

    def total_steps(self, spec: TrainingRunSpec, train_rows: int) -> int | None:
        """Steps the run will take, shown as status.progress.totalSteps."""
        ...

    def local_checkpoint_ranks(self, spec: TrainingRunSpec) -> frozenset[int] | None:
        """The ranks whose checkpoint shards this machine's processes load (restore fetches only those and the
        shared files); None when one process here loads the whole checkpoint.
        """
        ...

    def run(self, job: EngineJob) -> int:
        """Train until done or until ``job.stop`` is set; the exit code (0: finished)."""
        ...


def engine_for(name: str) -> Engine:
    if name == "verl":
        from loka_trainer.engines.verl import VerlEngine

        return VerlEngine()
    if name == "trl":
        from loka_trainer.engines.trl import TrlEngine

        return TrlEngine()
    msg = f"spec.engine: {name!r} is not an engine (accepted: verl, trl)"
    raise ValueError(msg)
