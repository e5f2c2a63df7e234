"""The runner around an engine that behaves like verl: metrics only in the JSONL file, checkpoints stored by
another process (verl's callback in a Ray actor). Status still shows both.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from loka_api import TrainingRun, TrainingRunSpec
from loka_api.dataset import build_dataset
from loka_api.manifest import Writer
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.engines import EngineJob
from loka_trainer.runner import EXIT_FAILED, EXIT_OK, EXIT_TERMINATED, Runner, StopSignal
from loka_trainer.tiny import write_tasks
from tests.trainer.conftest import write_verl_checkpoint

UID = "1b9e-first"


class VerlLikeEngine:
    """Writes verl file-logger lines and stores checkpoints itself, never calling job.on_checkpoint."""

    name = "verl-like"
    uses_ray = False

    def __init__(self, steps: int, *, stop_after: int | None = None) -> None:
        self.steps = steps
        self.stop_after = stop_after
        self.seen_job: EngineJob | None = None

    def total_steps(self, spec: TrainingRunSpec, train_rows: int) -> int | None:
        return self.steps

    def local_checkpoint_ranks(self, spec: TrainingRunSpec) -> frozenset[int] | None:
        return None

    def run(self, job: EngineJob) -> int:
        self.seen_job = job
        assert job.checkpoints is not None
        first = job.resume.step + 1 if job.resume is not None else 1
        with job.metrics_file.open("ab") as out:
            for step in range(first, self.steps + 1):
                data = {"training/global_step": step, "critic/score/mean": step / 10, "actor/kl_loss": 0.01}
                out.write(json.dumps({"step": step, "data": data}).encode() + b"\n")
                out.flush()
                if step % 2 == 0:
                    job.checkpoints.upload(
                        step, write_verl_checkpoint(job.work_dir / "verl", step=step, shard_bytes=512)
                    )
                if self.stop_after == step:
                    job.stop.set()  # as SIGTERM would
                    return 143
        return 0


def make_run(prefix: S3Uri, *, uid: str = UID, resume: str = "auto", attempt: int = 1) -> TrainingRun:
    base = f"s3://{prefix.bucket}/{prefix.key}"
    return TrainingRun.model_validate(
        {
            "metadata": {"name": "run", "namespace": "ns", "uid": uid},
            "spec": {
                "image": "x",
                "model": {"uri": "hf://org/model"},
                "data": {"train": f"{base}/data/train.parquet"},
                "checkpoints": {"uri": f"{base}/ckpt", "every": 2, "keep": 2, "resume": resume},
            },
            "status": {"attempt": attempt},
        }
    )


def attempt(
    run: TrainingRun,
    object_store: ObjectStore,
    tmp_path: Path,
    engine: VerlLikeEngine,
    patches: list[dict[str, Any]],
    *,
    stop: StopSignal | None = None,
) -> Runner:
    """One attempt of ``run``: a fresh pod (an empty work dir) and this attempt's writer identity."""
    number = run.status.attempt or 0
    return Runner(
        run,
        run_name="run",
        namespace="ns",
        patch_status=patches.append,
        work_dir=tmp_path / f"{run.metadata.uid}-attempt-{number}",
        store=object_store,
        engine=engine,
        stop=stop,
        writer=Writer(number, f"run-{run.metadata.uid}-{number}"),
        status_interval_s=0.0,
        poll_interval_s=0.05,
    )


def resumed_messages(patches: list[dict[str, Any]]) -> list[str]:
    return [p["message"] for p in patches if str(p.get("message", "")).startswith("resumed from")]


def stage_data(store: ObjectStore, prefix: S3Uri, tmp_path: Path) -> None:
    summary = build_dataset(write_tasks(tmp_path / "tasks.jsonl", 8), tmp_path / "data", validation_fraction=0.0)
    store.upload_files([(summary.train, prefix.join("data", "train.parquet"))])


def test_status_shows_metrics_and_the_checkpoint_another_process_stored(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    stage_data(object_store, s3_prefix, tmp_path)
    patches: list[dict[str, Any]] = []
    engine = VerlLikeEngine(steps=6)
    runner = Runner(
        make_run(s3_prefix),
        run_name="run",
        namespace="ns",
        patch_status=patches.append,
        work_dir=tmp_path / "work",
        store=object_store,
        engine=engine,
        status_interval_s=0.0,
        poll_interval_s=0.05,
    )
    assert runner.execute() == EXIT_OK
    assert engine.seen_job is not None
    assert engine.seen_job.inputs.model == "org/model"  # hf:// passes through
    progress = [p["progress"] for p in patches if "progress" in p]
    assert progress[-1] == {"step": 6, "totalSteps": 6}
    assert [p["metrics"]["rewardMean"] for p in patches if "metrics" in p][-1] == 0.6
    checkpoints = [p["checkpoint"] for p in patches if "checkpoint" in p]
    assert checkpoints[-1]["step"] == 6
    assert checkpoints[-1]["uri"] == str(s3_prefix.join("ckpt", "ns", "run", UID, "global_step_6"))
    assert len({c["step"] for c in checkpoints}) == len(checkpoints)  # each checkpoint reported once


def test_stop_reports_the_reason_and_the_checkpoint_the_next_attempt_resumes_from(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    stage_data(object_store, s3_prefix, tmp_path)
    patches: list[dict[str, Any]] = []
    stop = StopSignal(event=threading.Event(), reason="SIGTERM")
    runner = Runner(
        make_run(s3_prefix),
        run_name="run",
        namespace="ns",
        patch_status=patches.append,
        work_dir=tmp_path / "work",
        store=object_store,
        engine=VerlLikeEngine(steps=6, stop_after=5),
        stop=stop,
        status_interval_s=0.0,
        poll_interval_s=0.05,
    )
    assert runner.execute() == EXIT_TERMINATED
    assert patches[-1] == {"message": "trainer stopped by SIGTERM; resumes from checkpoint step 4"}
    store = CheckpointStore(object_store, s3_prefix.join("ckpt", "ns", "run", UID), keep=2)
    assert store.marker_step() == 4


def test_a_run_created_again_under_the_same_name_starts_from_scratch(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    stage_data(object_store, s3_prefix, tmp_path)
    before: list[dict[str, Any]] = []
    assert (
        attempt(make_run(s3_prefix, uid="uid-before"), object_store, tmp_path, VerlLikeEngine(6), before).execute() == 0
    )

    # `kubectl delete` and `kubectl apply` again: same namespace and name, a new uid (perhaps another model).
    patches: list[dict[str, Any]] = []
    engine = VerlLikeEngine(steps=4)
    assert attempt(make_run(s3_prefix, uid="uid-after"), object_store, tmp_path, engine, patches).execute() == 0

    assert engine.seen_job is not None
    assert engine.seen_job.resume is None, "the new run restored the deleted run's weights"
    assert resumed_messages(patches) == []
    assert [p["checkpoint"]["step"] for p in patches if "checkpoint" in p] == [2, 4]
    ckpt = s3_prefix.join("ckpt", "ns", "run")
    assert CheckpointStore(object_store, ckpt.join("uid-after"), keep=2).complete_steps() == [2, 4]
    assert CheckpointStore(object_store, ckpt.join("uid-before"), keep=2).complete_steps() == [4, 6], (
        "the new run pruned its predecessor's checkpoints"
    )


def test_an_explicit_resume_point_seeds_the_first_attempt_and_later_attempts_continue_from_their_own(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    stage_data(object_store, s3_prefix, tmp_path)
    seed = CheckpointStore(object_store, s3_prefix.join("seed"), keep=1, writer=Writer(1, "seed"))
    seed.claim()
    seed.upload(2, write_verl_checkpoint(tmp_path / "seed", step=2, shard_bytes=512))
    resume = str(seed.step_uri(2))

    first_engine, first = VerlLikeEngine(steps=12, stop_after=6), list[dict[str, Any]]()
    stop = StopSignal(event=threading.Event(), reason="SIGTERM")  # preempted after step 6
    run = make_run(s3_prefix, resume=resume, attempt=1)
    assert attempt(run, object_store, tmp_path, first_engine, first, stop=stop).execute() == EXIT_TERMINATED
    assert first_engine.seen_job is not None and first_engine.seen_job.resume is not None
    assert (first_engine.seen_job.resume.step, first_engine.seen_job.resume.explicit) == (2, True)
    assert not [p for p in first if p.get("message", "").startswith("resumed") and "checkpoint" in p], (
        "the seed is another run's checkpoint, not this run's status.checkpoint"
    )

    second_engine, second = VerlLikeEngine(steps=12), list[dict[str, Any]]()
    run = make_run(s3_prefix, resume=resume, attempt=2)
    assert attempt(run, object_store, tmp_path, second_engine, second).execute() == EXIT_OK
    assert second_engine.seen_job is not None and second_engine.seen_job.resume is not None
    assert second_engine.seen_job.resume.step == 6, "the second attempt rewound to the explicit resume point"
    assert not second_engine.seen_job.resume.explicit  # verl resumes it as its own latest (resume_mode=auto)
    assert resumed_messages(second)[0].startswith("resumed from checkpoint step 6")
    assert [p["progress"]["step"] for p in second if "progress" in p][-1] == 12
    assert seed.complete_steps() == [2], "the seed stays where it was, never pruned by the run"


def test_restore_falls_back_past_a_checkpoint_that_lost_a_file_and_says_so_in_status(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    stage_data(object_store, s3_prefix, tmp_path)
    first: list[dict[str, Any]] = []
    stop = StopSignal(event=threading.Event(), reason="SIGTERM")
    run = make_run(s3_prefix, attempt=1)
    assert attempt(run, object_store, tmp_path, VerlLikeEngine(8, stop_after=4), first, stop=stop).execute() == 143
    store = CheckpointStore(object_store, s3_prefix.join("ckpt", "ns", "run", UID), keep=2)
    assert store.complete_steps() == [2, 4]
    object_store.delete(store.step_uri(4).join("actor/model_world_size_2_rank_0.pt"))

    patches: list[dict[str, Any]] = []
    engine = VerlLikeEngine(steps=8)
    assert attempt(make_run(s3_prefix, attempt=2), object_store, tmp_path, engine, patches).execute() == EXIT_OK

    assert engine.seen_job is not None and engine.seen_job.resume is not None
    assert engine.seen_job.resume.step == 2
    (said,) = resumed_messages(patches)
    assert said.startswith("resumed from checkpoint step 2")
    (resumed,) = [p for p in patches if p.get("message") == said]
    assert resumed["checkpoint"]["step"] == 2, "status names the checkpoint it resumed from, in the same patch"
    assert "skipped step 4" in said
    assert "model_world_size_2_rank_0.pt does not exist" in said


def test_training_data_that_does_not_exist_is_a_permanent_failure_in_status(
    object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    patches: list[dict[str, Any]] = []  # nothing staged: s3://…/data/train.parquet does not exist
    engine = VerlLikeEngine(steps=2)
    assert attempt(make_run(s3_prefix), object_store, tmp_path, engine, patches).execute() == EXIT_FAILED
    assert engine.seen_job is None  # never started
    train = f"s3://{s3_prefix.bucket}/{s3_prefix.key}/data/train.parquet"
    assert patches[-1]["message"] == f"trainer failed: {train} does not exist"
    assert patches[-1]["failure"] == {"attempt": 1, "reason": "InputMissing", "permanent": True}
