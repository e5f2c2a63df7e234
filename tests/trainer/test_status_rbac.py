"""The trainer reports into its own run's status with the operator's per-run Role, and into nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from loka_trainer.checkpoints import CheckpointRecord
from loka_trainer.run_client import RunClient, RunIdentity, api_client
from loka_trainer.status_reporter import StatusReporter
from loka_trainer.step_metrics import StepMetrics
from tests.trainer.conftest import create_run, per_run_kubeconfig, read_run

SPEC: dict[str, Any] = {
    "engine": "trl",
    "image": "loka:rl-train",
    "model": {"uri": "s3://loka/models/tiny"},
    "data": {"train": "s3://loka/data/train.parquet"},
    "resources": {"gpusPerWorker": 0},
    "training": {"samplesPerPrompt": 2},
}


@pytest.fixture
def two_runs(k8s: Any, namespace: str, trainingrun_crd: None) -> tuple[str, str]:
    create_run(k8s, namespace, "mine", SPEC)
    create_run(k8s, namespace, "theirs", SPEC)
    return "mine", "theirs"


def test_trainer_reads_its_run_and_patches_its_status_with_the_per_run_role(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    runs = RunClient(api_client(str(kubeconfig)), RunIdentity("mine", namespace))
    assert runs.get().spec.engine.value == "trl"

    reporter = StatusReporter(runs.patch_status, total_steps=20, min_interval=0.0)
    reporter.report_metrics(
        StepMetrics(step=3, epoch=0, reward_mean=0.25, kl_loss=0.01, response_length_mean=42.0, tokens_per_second=900.0)
    )
    reporter.report_checkpoint(
        CheckpointRecord(step=2, uri="s3://loka/ckpt/x/mine/global_step_2", time="2026-01-01T00:00:00Z")
    )
    assert reporter.patches_sent == 2

    status = read_run(k8s, namespace, "mine")["status"]
    assert status["progress"] == {"step": 3, "totalSteps": 20, "epoch": 0}
    assert status["metrics"]["rewardMean"] == 0.25
    assert status["metrics"]["klLoss"] == 0.01
    assert status["metrics"]["responseLengthMean"] == 42.0
    assert status["metrics"]["tokensPerSecond"] == 900.0
    assert status["metrics"]["updatedAt"]
    assert status["checkpoint"]["step"] == 2
    assert status["checkpoint"]["uri"] == "s3://loka/ckpt/x/mine/global_step_2"


def test_trainer_cannot_read_or_patch_another_run(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    other = RunClient(api_client(str(kubeconfig)), RunIdentity("theirs", namespace))
    with pytest.raises(ApiException) as patch_error:
        other.patch_status({"progress": {"step": 99}})
    assert patch_error.value.status == 403
    with pytest.raises(ApiException) as get_error:
        other.get()
    assert get_error.value.status == 403
    assert (
        "status" not in read_run(k8s, namespace, "theirs")
        or "progress" not in read_run(k8s, namespace, "theirs")["status"]
    )


def test_trainer_cannot_change_its_own_spec(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    from kubernetes import client

    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    objects = client.CustomObjectsApi(api_client(str(kubeconfig)))
    with pytest.raises(ApiException) as error:
        objects.patch_namespaced_custom_object(
            "loka.dev", "v1alpha1", namespace, "trainingruns", "mine", {"spec": {"suspend": True}}
        )
    assert error.value.status == 403
