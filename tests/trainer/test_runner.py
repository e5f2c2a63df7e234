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
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.engines import EngineJob
from loka_trainer.runner import EXIT_OK, EXIT_TERMINATED, Runner, StopSignal
from loka_trainer.storage import ObjectStore, S3Uri
from loka_trainer.tiny import write_tasks
from tests.trainer.conftest import write_verl_checkpoint


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

    def run(self, job: EngineJob) -> int:
        self.seen_job = job
        assert job.checkpoints is not None
        with job.metrics_file.open("ab") as out:
            for step in range(1, self.steps + 1):
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


def make_run(prefix: S3Uri) -> TrainingRun:
    base = f"s3://{prefix.bucket}/{prefix.key}"
    return TrainingRun.model_validate(
        {
            "metadata": {"name": "run", "namespace": "ns"},
            "spec": {
                "image": "x",
                "model": {"uri": "hf://org/model"},
                "data": {"train": f"{base}/data/train.parquet"},
                "checkpoints": {"uri": f"{base}/ckpt", "every": 2, "keep": 2},
            },
        }
    )


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
    assert checkpoints[-1]["uri"] == str(s3_prefix.join("ckpt", "ns", "run", "global_step_6"))
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
    store = CheckpointStore(object_store, s3_prefix.join("ckpt", "ns", "run"), keep=2)
    assert store.marker_step() == 4
