"""``loka-trainer run`` and ``render``: read the run, stage inputs, restore a checkpoint, run the engine,
follow its metrics into status, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError

from loka_api import CheckpointPin, TrainingRun
from loka_api.checkpoints import CheckpointError, CheckpointRecord
from loka_api.contract import ENV_WANDB_KEY, ENV_WORK_DIR, rollouts_prefix, save_window_s, step_folder
from loka_api.manifest import Writer
from loka_api.storage import ObjectMissingError, ObjectStore, TransferCancelledError
from loka_trainer.checkpoints import CheckpointStore, WriterFencedError
from loka_trainer.engines import Engine, EngineJob, ResumePoint, SaveOnStop, engine_for
from loka_trainer.nodes import FileOnAnyNode, connected_to_ray
from loka_trainer.settings import redact, wandb_mode
from loka_trainer.sft_data import SFTDataError
from loka_trainer.staging import HF_SCHEME, StagedInputs, parquet_rows, stage_inputs
from loka_trainer.status_reporter import StatusPatcher, StatusReporter
from loka_trainer.step_metrics import MetricsFollower
from loka_trainer.stop_handshake import StopHandshake

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM.
EXIT_TERMINATED = 143
# How often status.pins is mirrored into S3: a dependent's pin must land before the source prunes (every N steps).
PIN_SYNC_S = 3.0


class PermanentFailureError(RuntimeError):
    """No retry can help (an input that does not exist, data the trainer cannot read): the run ends at once."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RenderError(ValueError):
    """The manifest cannot be rendered; the message names the field and the bad value."""


def load_manifest(path: Path, *, name: str | None = None) -> TrainingRun:
    """The TrainingRun in ``path``; ``name`` picks one of several (a pipeline file holds one run per stage)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as error:
        raise RenderError(f"{path}: {error}") from error
    runs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "TrainingRun"]
    names = [str((run.get("metadata") or {}).get("name", "")) for run in runs]
    if name is not None:
        runs = [run for run, found in zip(runs, names, strict=True) if found == name]
        if not runs:
            raise RenderError(f"{path}: no TrainingRun named {name!r} (found: {', '.join(names) or 'none'})")
    if len(runs) > 1:
        raise RenderError(f"{path}: {len(runs)} TrainingRuns ({', '.join(names)}): pick one with --name")
    if not runs:
        raise RenderError(f"{path}: expected a TrainingRun manifest (kind: TrainingRun), found no TrainingRun")
    body = runs[0]
    try:
        return TrainingRun.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in error.errors()
        )
        raise RenderError(f"{path}: {problems}") from error


def default_work_root() -> Path:
    return Path(os.environ.get(ENV_WORK_DIR) or Path.home() / "loka-work")


def render_command_line(path: Path, *, namespace: str | None = None, name: str | None = None) -> str:
    """The exact verl command ``loka-trainer run`` would launch for this manifest, as one shell line
    (paths as the trainer stages them under $LOKA_WORK_DIR; no cluster, no S3 access).
    """
    from loka_trainer.engines.verl import command

    run = load_manifest(path, name=name)
    spec = run.spec
    name = run.metadata.name or path.stem
    ns = run.metadata.namespace or namespace or "default"
    work = default_work_root() / ns / name
    checkpoints = None
    if spec.checkpoints is not None:
        store = ObjectStore(endpoint_url=spec.storage.endpoint if spec.storage else None)
        checkpoints = CheckpointStore.for_run(
            store,
            spec.checkpoints.uri,
            namespace=ns,
            run_name=name,
            uid=run.metadata.uid or "<uid>",  # known once the API server has created the run
            keep=spec.checkpoints.keep,
            writer=Writer(run.status.attempt or 1, "<ray-cluster>"),
        )
    resume = None
    if spec.checkpoints is not None and spec.checkpoints.resume not in {"auto", "never"}:
        folder = spec.checkpoints.resume.rstrip("/").rsplit("/", 1)[-1]
        resume = ResumePoint(int(folder.rsplit("_", 1)[-1]), work / "checkpoints" / folder, explicit=True)
    wandb = spec.tracking.wandb if spec.tracking else None
    requested = wandb.mode if wandb is not None else "disabled"
    key_given = {ENV_WANDB_KEY: "set"} if wandb is not None and wandb.api_key is not None else {}
    uri = spec.model.uri or ""  # fromRun: the trainer stages the source checkpoint into work/model
    job = EngineJob(
        spec=spec,
        run_name=name,
        namespace=ns,
        inputs=StagedInputs(
            model=uri.removeprefix(HF_SCHEME) if uri.startswith(HF_SCHEME) else str(work / "model"),
            train_files=work / "data" / "train.parquet",
            val_files=work / "data" / "validation.parquet" if spec.data.validation else None,
        ),
        work_dir=work,
        checkpoint_dir=work / "checkpoints",
        metrics_file=work / "metrics.jsonl",
        checkpoints=checkpoints,
        resume=resume,
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode=wandb_mode(requested, key_given),
    )
    try:
        argv = command(job, environ={})
    except ValueError as error:
        raise RenderError(str(error)) from error
    return shlex.join(["python", *argv[1:]])


@dataclass
class StopSignal:
    """Set by SIGTERM/SIGINT; engines and transfers watch ``event``."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def install(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            del frame
            self.reason = signal.Signals(signum).name
            self.event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


class Runner:
    def __init__(
        self,
        run: TrainingRun,
        *,
        run_name: str,
        namespace: str,
        patch_status: StatusPatcher,
        work_dir: Path,
        store: ObjectStore | None = None,
        engine: Engine | None = None,
        stop: StopSignal | None = None,
        writer: Writer | None = None,
        status_interval_s: float = 10.0,
        poll_interval_s: float = 1.0,
        read_pins: Callable[[], list[CheckpointPin]] | None = None,
    ) -> None:
        self.run = run
        self.spec = run.spec
        self.run_name = run_name
        self.namespace = namespace
        self.work_dir = work_dir
        self.store = store or ObjectStore(endpoint_url=self.spec.storage.endpoint if self.spec.storage else None)
        self.engine = engine or engine_for(self.spec.engine.value)
        self.stop = stop or StopSignal()
        self.reporter = StatusReporter(patch_status, min_interval=status_interval_s)
        self.poll_interval_s = poll_interval_s
        # status.pins: this run's checkpoints that runs starting from it still need (mirrored into S3 for pruning).
        self.read_pins = read_pins
        # The marker is read at most this often: the verl callback stores checkpoints from another process.
        self.marker_interval_s = max(status_interval_s, poll_interval_s)
        self._reported_checkpoint: int | None = None
        self._checkpoint_lock = threading.Lock()
        self.skipped_checkpoints = ""  # why newer checkpoints were passed over at restore, for status
        self.restored_checkpoint: CheckpointRecord | None = None  # the run's own, when it resumed from one
        self.save_on_stop: SaveOnStop | None = None
        # This attempt: the only writer of the run's checkpoints once it has claimed them.
        self.writer = writer or Writer(run.status.attempt or 0, f"{os.uname().nodename}:{os.getpid()}")
        self.checkpoints: CheckpointStore | None = None
        if self.spec.checkpoints is not None:
            self.checkpoints = CheckpointStore.for_run(
                self.store,
                self.spec.checkpoints.uri,
                namespace=namespace,
                run_name=run_name,
                uid=run.metadata.uid,
                keep=self.spec.checkpoints.keep,
                writer=self.writer,
            )

    @property
    def source_uri(self) -> str | None:
        """The checkpoint spec.model.fromRun resolved to, as the operator recorded it before launching."""
        source = self.run.status.source
        return source.uri if source is not None else None

    @property
    def train_data_uri(self) -> str | None:
        """The preference pairs spec.data.fromEvaluation resolved to, as the operator recorded them."""
        data = self.run.status.train_data
        return data.uri if data is not None else None

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.work_dir / "metrics.jsonl"

    def restore(self, ranks: frozenset[int] | None = None) -> ResumePoint | None:
        """Put the checkpoint to resume from on local disk (only the files of ``ranks``; None: all of them).

        The run's own latest checkpoint that restores, falling back past broken ones (``resume: auto``, and every
        attempt of an explicit resume once the run has a checkpoint of its own); else the checkpoint
        ``checkpoints.resume`` names, which seeds the run only until then; else none.
        """
        checkpoints = self.spec.checkpoints
        if checkpoints is None or checkpoints.resume == "never" or self.checkpoints is None:
            return None
        own = self.checkpoints.restore_latest(self.checkpoint_dir, ranks=ranks, cancel=self.stop.event)
        self.skipped_checkpoints = own.describe_skipped()
        self.restored_checkpoint = own.record
        if own.step is not None:
            folder = self.checkpoint_dir / step_folder(own.step)
            return ResumePoint(own.step, folder, explicit=False, source=str(self.checkpoints.prefix))
        if checkpoints.resume == "auto":
            log.info("no complete checkpoint under %s: starting from scratch", self.checkpoints.prefix)
            return None
        source, step = CheckpointStore.for_checkpoint_uri(self.store, checkpoints.resume)
        try:
            folder = source.restore(step, self.checkpoint_dir, ranks=ranks, cancel=self.stop.event)
        except CheckpointError as error:
            raise CheckpointError(f"checkpoints.resume {checkpoints.resume}: {error}") from error
        return ResumePoint(step, folder, explicit=True, source=str(source.prefix))

    def _report_checkpoint(self, record: CheckpointRecord) -> None:
        with self._checkpoint_lock:
            if record.step == self._reported_checkpoint:
                return
            self._reported_checkpoint = record.step
        self.reporter.report_checkpoint(record)

    def _poll_marker(self) -> None:
        """Report the checkpoint the marker names: verl's callback runs in a Ray actor, maybe on a worker node
        that has no ServiceAccount token; the marker is the one place every uploader moves last.
        """
        if self.checkpoints is None:
            return
        try:
            record = self.checkpoints.marker()
        except Exception as error:  # S3 hiccups must not stop the follower
            log.warning("could not read the checkpoint marker: %s", type(error).__name__)
            return
        if record is not None:
            self._report_checkpoint(record)

    def execute(self) -> int:
        """Stage, restore, train, report. Returns the process exit code."""
        # S3 is the truth: a local checkpoint (and verl's tracker) left in a reused work dir must not be resumed.
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        for folder in (self.work_dir, self.checkpoint_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.metrics_file.unlink(missing_ok=True)
        follower_stop = threading.Event()
        follower: threading.Thread | None = None
        self.save_on_stop = self._save_on_stop()
        try:
            if self.checkpoints is not None:
                # Before anything is restored: from here on an older attempt can neither move the marker nor prune.
                self.checkpoints.claim()
                self._sync_pins()
                if self.spec.rollouts is not None:
                    self.reporter.report_rollouts(rollouts_prefix(str(self.checkpoints.prefix)))
            inputs: StagedInputs = self._stage()
            self.reporter.total_steps = self.engine.total_steps(self.spec, parquet_rows(inputs.train_files))
            with self._engine_session():
                resume = self.restore(self.engine.local_checkpoint_ranks(self.spec))
                self._report_restore(resume)
                job = EngineJob(
                    spec=self.spec,
                    run_name=self.run_name,
                    namespace=self.namespace,
                    inputs=inputs,
                    work_dir=self.work_dir,
                    checkpoint_dir=self.checkpoint_dir,
                    metrics_file=self.metrics_file,
                    checkpoints=self.checkpoints,
                    resume=resume,
                    on_checkpoint=self._report_checkpoint,
                    stop=self.stop.event,
                    wandb_mode=wandb_mode(self._wandb_requested_mode()),
                    source_uri=self.source_uri,
                    save_on_stop=self.save_on_stop,
                )
                follower = threading.Thread(target=self._follow, args=(follower_stop,), name="metrics", daemon=True)
                follower.start()
                code = 0 if self.stop.event.is_set() else self.engine.run(job)
                # Drained inside the session: the metrics file may sit on another Ray node. Not flushed yet: the
                # last metrics ride in the same patch as a closing message (one bounded API call when time is short).
                self._stop_follower(follower, follower_stop, flush=False)
        except TransferCancelledError:
            code = EXIT_TERMINATED
        except WriterFencedError as error:
            # A newer attempt holds the checkpoints (and the status): stop without a word in either.
            log.warning("%s", error)
            self._stop_follower(follower, follower_stop)
            return EXIT_TERMINATED if self.stop.event.is_set() else EXIT_FAILED
        except PermanentFailureError as error:
            return self._fail(f"trainer failed: {error}", follower, follower_stop, permanent=error.reason)
        except (CheckpointError, FileNotFoundError, ValueError, OSError) as error:
            return self._fail(f"trainer failed: {error}", follower, follower_stop)
        except Exception as error:
            log.exception("trainer failed")
            return self._fail(f"trainer failed: {type(error).__name__}: {error}", follower, follower_stop)
        self._stop_follower(follower, follower_stop, flush=False)
        if self.stop.event.is_set():
            self.reporter.report_message(self._stopped_message())
            return EXIT_TERMINATED
        if code != 0:
            self.reporter.report_message(f"trainer failed: {self.engine.name} exited with code {code}")
            return EXIT_FAILED
        self.reporter.flush()
        return EXIT_OK

    def _save_on_stop(self) -> SaveOnStop | None:
        """With checkpoints, a stop ends the step in flight with one, within the window the grace period leaves."""
        if self.checkpoints is None:
            return None
        handshake = StopHandshake(self.work_dir / "stop")
        handshake.reset()
        plan = SaveOnStop(window_s=save_window_s(self.spec.grace_period_seconds), handshake=handshake)

        def close_window_after_stop() -> None:
            self.stop.event.wait()
            plan.reason = self.stop.reason or plan.reason
            log.info("stop (%s): %.0f s to end the step in flight with a checkpoint", plan.reason, plan.window_s)
            plan.abandon.wait(plan.window_s)
            plan.abandon.set()

        threading.Thread(target=close_window_after_stop, name="save-window", daemon=True).start()
        return plan

    def _stopped_message(self) -> str:
        """Why the trainer stopped, what became of the save on the way out, and where the next attempt resumes.
        No S3 call here: time is short now (the follower read the marker once more as it stopped).
        """
        parts = [f"trainer stopped by {self.stop.reason or 'a stop request'}"]
        last = self._reported_checkpoint
        plan = self.save_on_stop
        if plan is not None:
            if plan.outcome():
                parts.append(plan.outcome())
            if plan.saved_step is not None and (last is None or plan.saved_step > last):
                last = plan.saved_step
        if last is not None:
            parts.append(f"resumes from checkpoint step {last}")
        return "; ".join(parts)

    def _stage(self) -> StagedInputs:
        try:
            return stage_inputs(
                self.spec,
                self.work_dir,
                self.store,
                source_uri=self.source_uri,
                train_uri=self.train_data_uri,
                cancel=self.stop.event,
            )
        except ObjectMissingError as error:
            raise PermanentFailureError("InputMissing", str(error)) from error
        except SFTDataError as error:
            raise PermanentFailureError("InputUnreadable", str(error)) from error

    def _report_restore(self, resume: ResumePoint | None) -> None:
        if resume is not None:
            log.info("resuming from checkpoint step %d", resume.step)
            own = None if resume.explicit else self.restored_checkpoint
            if own is not None:
                with self._checkpoint_lock:
                    self._reported_checkpoint = own.step
            source = resume.source or str(resume.folder)
            self.reporter.report_resumed(
                resume.step, source, self.skipped_checkpoints, checkpoint=own, attempt=self.writer.attempt
            )
            return
        self.reporter.report_started(self.writer.attempt)
        if self.skipped_checkpoints:
            self.reporter.report_message(
                f"no checkpoint could be restored, starting from scratch: {self.skipped_checkpoints}"
            )

    def _engine_session(self) -> AbstractContextManager[bool]:
        """For Ray engines, this process joins the Ray cluster for the run (staging other nodes, metrics)."""
        return connected_to_ray() if self.engine.uses_ray else nullcontext(False)

    def _wandb_requested_mode(self) -> str | None:
        tracking = self.spec.tracking
        return tracking.wandb.mode if tracking is not None and tracking.wandb is not None else "disabled"

    def _follow(self, stop: threading.Event) -> None:
        follower = MetricsFollower(self.metrics_file, reader=FileOnAnyNode())

        def sink(metrics: Any) -> None:
            self.reporter.report_metrics(metrics)

        next_marker_check = next_pin_sync = time.monotonic()
        while not stop.wait(self.poll_interval_s):
            try:
                for metrics in follower.poll():
                    sink(metrics)
            except Exception as error:  # a node going away must not end the follower
                log.warning("could not read the metrics file: %s", type(error).__name__)
            self.reporter.tick()
            if time.monotonic() >= next_marker_check:
                self._poll_marker()
                next_marker_check = time.monotonic() + self.marker_interval_s
            if time.monotonic() >= next_pin_sync:
                self._sync_pins()
                next_pin_sync = time.monotonic() + PIN_SYNC_S
        try:
            for metrics in follower.poll():
                sink(metrics)
        except Exception as error:
            log.warning("could not read the last metrics: %s", type(error).__name__)
        self._poll_marker()

    def _sync_pins(self) -> None:
        """Mirror status.pins into the pin objects the pruning keeps (a failure only delays it to the next try)."""
        if self.read_pins is None or self.checkpoints is None:
            return
        try:
            self.checkpoints.sync_pins(self.read_pins())
        except Exception as error:
            log.warning("could not sync the checkpoint pins: %s: %s", type(error).__name__, error)

    def _stop_follower(self, follower: threading.Thread | None, stop: threading.Event, *, flush: bool = True) -> None:
        stop.set()
        if follower is not None:
            follower.join(timeout=10)
        if flush:
            self.reporter.flush()

    def _fail(
        self, message: str, follower: threading.Thread | None, stop: threading.Event, *, permanent: str = ""
    ) -> int:
        self._stop_follower(follower, stop, flush=False)
        message = redact(message)
        log.error("%s", message)
        if permanent:
            self.reporter.report_failure(message, attempt=self.writer.attempt or 1, reason=permanent, permanent=True)
        else:
            self.reporter.report_message(message)
        return EXIT_FAILED


def run_from_environment(*, work_dir: Path | None = None, kubeconfig: str | None = None) -> int:
    """Entry point of ``loka-trainer run``: identity from env, the run from the API, then Runner.execute()."""
    from loka_trainer.run_client import IdentityError, RunClient, RunIdentity, api_client

    stop = StopSignal()
    stop.install()
    try:
        identity = RunIdentity.from_env()
    except IdentityError as error:
        log.error("%s", error)
        return EXIT_FAILED
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    runs = RunClient(api_client(kubeconfig), identity)
    try:
        run = runs.serve_attempt()
    except ApiException as error:
        log.error(
            "cannot read TrainingRun %s/%s: %s %s (the per-run Role must allow get on it)",
            identity.namespace,
            identity.name,
            error.status,
            error.reason,
        )
        return EXIT_FAILED
    except HTTPError as error:  # the API server did not answer within the bound
        log.error("cannot read TrainingRun %s/%s: %s", identity.namespace, identity.name, error)
        return EXIT_FAILED
    root = work_dir or default_work_root()
    runner = Runner(
        run,
        run_name=identity.name,
        namespace=identity.namespace,
        patch_status=runs.patch_status,
        work_dir=root / identity.namespace / identity.name,
        stop=stop,
        writer=Writer(runs.attempt or 0, identity.holder),
        read_pins=lambda: runs.get().status.pins,
    )
    return runner.execute()
