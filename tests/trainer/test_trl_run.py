"""`loka-trainer run` end to end on CPU: real GRPO steps (TRL) on a tiny local model, checkpoints in MinIO,
progress in the run's status through the per-run Role, and a SIGTERM that loses at most one interval.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loka_api.dataset import build_dataset
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.storage import ObjectStore, S3Uri
from loka_trainer.tiny import build_tiny_model, write_tasks
from tests.trainer.conftest import create_run, per_run_kubeconfig, read_run

RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 with a locally trained tokenizer, and a toy dataset in verl's RL parquet schema."""
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_model(root / "model")
    build_dataset(write_tasks(root / "tasks.jsonl", 48), root / "data", validation_fraction=0.1)
    return root


def upload_inputs(store: ObjectStore, tiny: Path, prefix: S3Uri) -> None:
    files = [(p, prefix.join("model", p.relative_to(tiny / "model").as_posix())) for p in (tiny / "model").rglob("*")]
    files += [(tiny / "data" / name, prefix.join("data", name)) for name in ("train.parquet", "validation.parquet")]
    store.upload_files([(path, dest) for path, dest in files if path.is_file()])


def run_spec(prefix: S3Uri, *, max_steps: int, every: int) -> dict[str, Any]:
    base = f"s3://{prefix.bucket}/{prefix.key}"
    return {
        "engine": "trl",
        "image": "loka:rl-train",
        "model": {"uri": f"{base}/model"},
        "data": {
            "train": f"{base}/data/train.parquet",
            "validation": f"{base}/data/validation.parquet",
            "maxPromptLength": 64,
            "maxResponseLength": 12,
        },
        "reward": {"function": "loka_trainer.rewards.gsm8k:compute_score"},
        "training": {"maxSteps": max_steps, "batchSize": 2, "samplesPerPrompt": 4, "learningRate": 1.0e-4},
        "resources": {"gpusPerWorker": 0},
        "checkpoints": {"uri": f"{base}/ckpt", "every": every, "keep": 2, "resume": "auto"},
    }


def start_trainer(env: dict[str, str], work_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    trainer = Path(sys.executable).parent / "loka-trainer"
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(trainer), "run", "--work-dir", str(work_dir)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@dataclass(frozen=True)
class TrainerCase:
    """One TrainingRun's world: the API (admin), its namespace, MinIO, and the trainer's environment."""

    k8s: Any
    namespace: str
    store: ObjectStore
    prefix: S3Uri
    work: Path
    env_for: Callable[[str], dict[str, str]]

    def checkpoints(self, run: str) -> CheckpointStore:
        uid = read_run(self.k8s, self.namespace, run)["metadata"]["uid"]
        return CheckpointStore(self.store, self.prefix.join("ckpt", self.namespace, run, uid), keep=2)

    def operator_counts_attempt(self, run: str, attempt: int) -> None:
        """status.attempt as the operator writes it when an attempt starts (no operator runs in these tests)."""
        from kubernetes import client

        objects: Any = client.CustomObjectsApi(self.k8s)
        objects.patch_namespaced_custom_object_status(
            "loka.dev", "v1alpha1", self.namespace, "trainingruns", run, {"status": {"attempt": attempt}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip


@pytest.fixture
def case(  # noqa: PLR0917 - pytest injects fixtures positionally
    cluster: Any,
    k8s: Any,
    namespace: str,
    trainingrun_crd: None,
    s3_env: dict[str, str],
    object_store: ObjectStore,
    s3_prefix: S3Uri,
    tiny_inputs: Path,
    tmp_path: Path,
) -> TrainerCase:
    """Inputs uploaded to MinIO, and the environment the operator gives the trainer, with a kubeconfig for the
    per-run ServiceAccount (its Role: get this run, patch its status).
    """
    upload_inputs(object_store, tiny_inputs, s3_prefix)

    def env_for(name: str) -> dict[str, str]:
        kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, name, tmp_path)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "WANDB", "HF_"))}
        return {
            **base,
            **s3_env,
            "AWS_DEFAULT_REGION": "us-east-1",
            "KUBECONFIG": str(kubeconfig),
            "LOKA_RUN_NAME": name,
            "LOKA_RUN_NAMESPACE": namespace,
            "HF_HUB_OFFLINE": "1",  # prove nothing is fetched from a hub
            "TOKENIZERS_PARALLELISM": "false",
        }

    return TrainerCase(k8s, namespace, object_store, s3_prefix, tmp_path, env_for)


def test_trl_engine_runs_grpo_steps_stores_checkpoints_and_reports_status(case: TrainerCase) -> None:
    create_run(case.k8s, case.namespace, "tiny-grpo", run_spec(case.prefix, max_steps=4, every=2))
    log = case.work / "trainer.log"
    trainer = start_trainer(case.env_for("tiny-grpo"), case.work / "work", log)
    try:
        code = trainer.wait(timeout=RUN_TIMEOUT_S)
    finally:
        trainer.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert s3_env_values_absent(output)

    status = read_run(case.k8s, case.namespace, "tiny-grpo")["status"]
    assert status["progress"]["step"] == 4
    assert status["progress"]["totalSteps"] == 4
    assert status["metrics"]["responseLengthMean"] > 0
    assert "rewardMean" in status["metrics"]
    assert "klLoss" in status["metrics"]
    assert status["metrics"]["tokensPerSecond"] > 0
    store = case.checkpoints("tiny-grpo")
    assert status["checkpoint"]["step"] == 4
    assert status["checkpoint"]["uri"] == str(store.step_uri(4))
    assert store.complete_steps() == [2, 4]
    assert store.marker_step() == 4
    manifest = store.manifest(4)
    assert manifest is not None
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= {f.path for f in manifest.files}


def s3_env_values_absent(output: str) -> bool:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    return not secret or secret not in output


def test_sigterm_stops_the_run_reports_why_and_the_next_attempt_resumes_from_the_last_checkpoint(
    case: TrainerCase,
) -> None:
    create_run(case.k8s, case.namespace, "preempted", run_spec(case.prefix, max_steps=8, every=2))
    env = case.env_for("preempted")
    store = case.checkpoints("preempted")
    log = case.work / "trainer.log"
    case.operator_counts_attempt("preempted", 1)

    first = start_trainer(env, case.work / "attempt-1", log)
    try:
        wait_for(
            lambda: (store.marker_step() or 0) >= 2 or first.poll() is not None,
            timeout=RUN_TIMEOUT_S,
            what="a first checkpoint",
        )
        assert first.poll() is None, log.read_text(errors="replace")[-4000:]
        first.send_signal(signal.SIGTERM)  # what the kubelet sends on preemption or deletion
        code = first.wait(timeout=60)
    finally:
        first.kill()
    assert code == 143, log.read_text(errors="replace")[-4000:]
    stopped_at = store.marker_step()
    assert stopped_at is not None
    assert stopped_at < 8
    assert store.latest_complete() == stopped_at  # an upload cut short never moved the marker
    message = read_run(case.k8s, case.namespace, "preempted")["status"]["message"]
    assert "SIGTERM" in message
    assert f"checkpoint step {stopped_at}" in message

    case.operator_counts_attempt("preempted", 2)
    second = start_trainer(env, case.work / "attempt-2", log)  # a fresh pod: empty local disk
    try:
        code = second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        second.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert f"resuming from checkpoint step {stopped_at}" in output
    status = read_run(case.k8s, case.namespace, "preempted")["status"]
    assert status["progress"]["step"] == 8
    assert status["checkpoint"]["step"] == 8
    assert store.marker_step() == 8


def test_missing_training_data_fails_the_run_with_the_uri_in_status(case: TrainerCase) -> None:
    spec = run_spec(case.prefix, max_steps=2, every=2)
    spec["data"]["train"] = f"s3://{case.prefix.bucket}/{case.prefix.key}/data/missing.parquet"
    create_run(case.k8s, case.namespace, "no-data", spec)
    log = case.work / "trainer.log"
    trainer = start_trainer(case.env_for("no-data"), case.work / "work", log)
    try:
        code = trainer.wait(timeout=RUN_TIMEOUT_S)
    finally:
        trainer.kill()
    assert code == 1, log.read_text(errors="replace")[-4000:]
    status = read_run(case.k8s, case.namespace, "no-data")["status"]
    assert status["message"] == f"trainer failed: {spec['data']['train']} does not exist"
    assert "progress" not in status
    assert case.checkpoints("no-data").all_steps() == []
