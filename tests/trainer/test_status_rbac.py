"""The trainer reports into its own run's status with the operator's per-run Role, and into nothing else; a
replaced attempt's late patches are refused by the API server itself (a JSON patch `test` on status.attempt).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import wait_until
from loka_api.checkpoints import CheckpointRecord
from loka_trainer.run_client import RunClient, RunIdentity, api_client
from loka_trainer.status_reporter import StatusReporter
from loka_trainer.step_metrics import StepMetrics
from tests.trainer.conftest import RUN_GROUP, RUN_PLURAL, RUN_VERSION, create_run, per_run_kubeconfig, read_run

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


def operator_writes(k8s: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    """What the operator writes into a run's status (as an admin: its own ClusterRole)."""
    from kubernetes import client

    objects: Any = client.CustomObjectsApi(k8s)
    objects.patch_namespaced_custom_object_status(
        RUN_GROUP, RUN_VERSION, namespace, RUN_PLURAL, name, {"status": status},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def trainer_of(kubeconfig: Path, namespace: str, ray_cluster: str) -> RunClient:
    runs = RunClient(api_client(str(kubeconfig)), RunIdentity("mine", namespace, ray_cluster=ray_cluster))
    runs.serve_attempt(wait_s=0)
    return runs


def test_trainer_reads_its_run_and_patches_its_status_with_the_per_run_role(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    operator_writes(k8s, namespace, "mine", {"attempt": 1, "rayCluster": "mine-a1b2c"})
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    runs = trainer_of(kubeconfig, namespace, "mine-a1b2c")
    assert runs.get().spec.engine.value == "trl"
    assert runs.attempt == 1

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

    # A step whose metrics file lacks some metrics leaves the last values shown, as a merge patch would.
    reporter.report_metrics(StepMetrics(step=4, reward_mean=0.5))
    metrics = read_run(k8s, namespace, "mine")["status"]["metrics"]
    assert (metrics["rewardMean"], metrics["klLoss"]) == (0.5, 0.01)


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


def bound_token(k8s: Any, namespace: str, account: str, anchor: str) -> str:
    """A token for `account` that dies with the Secret `anchor` (as a projected token dies with its pod)."""
    core: Any = client.CoreV1Api(k8s)
    uid = core.create_namespaced_secret(namespace, {"metadata": {"name": anchor}}).metadata.uid
    request = {"audiences": [], "expirationSeconds": 600,
               "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": anchor, "uid": uid}}  # fmt: skip
    token: str = core.create_namespaced_service_account_token(account, namespace, {"spec": request}).status.token
    return token


def token_works(cluster: Any, namespace: str, token: str) -> bool:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{cluster.server}/apis/loka.dev/v1alpha1/namespaces/{namespace}/trainingruns/mine"
    )
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cluster.layout.pki.ca_crt)):
            return True
    except urllib.error.HTTPError as error:
        return error.code != 401


@pytest.mark.parametrize("where", ["pod", "kubeconfig tokenFile"])
@pytest.mark.usefixtures("two_runs")
def test_trainer_reads_its_token_file_again_after_the_kubelet_replaces_it(  # noqa: PLR0917
    cluster: Any, k8s: Any, namespace: str, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)  # the ServiceAccount and its Role
    account = "loka-run-mine"
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "ca.crt").write_bytes(cluster.layout.pki.ca_crt.read_bytes())
    (mounted / "token").write_text(first := bound_token(k8s, namespace, account, "first-pod"))
    if where == "pod":
        host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        api = api_client(service_account_dir=mounted)
    else:
        kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
        kubeconfig["users"] = [{"name": account, "user": {"tokenFile": "serviceaccount/token"}}]
        kubeconfig["contexts"][0]["context"]["user"] = account
        (tmp_path / "trainer.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        api = api_client(str(tmp_path / "trainer.kubeconfig"))
    runs = RunClient(api, RunIdentity("mine", namespace))
    runs.patch_status({"message": "first token"})

    # The kubelet writes a new token; the old one stops working (here: its bound object goes away).
    replacement = mounted / "token.new"
    replacement.write_text(bound_token(k8s, namespace, account, "second-pod"))
    replacement.replace(mounted / "token")
    client.CoreV1Api(k8s).delete_namespaced_secret("first-pod", namespace)
    wait_until(lambda: not token_works(cluster, namespace, first), timeout=60, what="the first token to be refused")

    runs.patch_status({"message": "second token"})
    assert read_run(k8s, namespace, "mine")["status"]["message"] == "second token"


def test_a_replaced_attempts_late_status_patch_is_refused_by_the_api_server(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    operator_writes(k8s, namespace, "mine", {"attempt": 1, "rayCluster": "mine-old11"})
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    old = StatusReporter(trainer_of(kubeconfig, namespace, "mine-old11").patch_status, total_steps=20, min_interval=0)
    old.report_metrics(StepMetrics(step=5, reward_mean=0.25))

    # Preempted: the operator counts attempt 2 on a new RayCluster, whose trainer resumes from step 4 ...
    operator_writes(k8s, namespace, "mine", {"attempt": 2, "rayCluster": "mine-new22"})
    new = StatusReporter(trainer_of(kubeconfig, namespace, "mine-new22").patch_status, total_steps=20, min_interval=0)
    new.report_resumed(4, "s3://loka/ckpt/team-a/mine/uid")
    # ... while attempt 1, in its grace period, still finishes a step and says why it stopped.
    old.report_metrics(StepMetrics(step=6, reward_mean=0.3))
    old.report_message("trainer stopped by SIGTERM; resumes from checkpoint step 4")

    status = read_run(k8s, namespace, "mine")["status"]
    assert status["message"] == "resumed from checkpoint step 4 (s3://loka/ckpt/team-a/mine/uid)"
    assert status["progress"]["step"] == 4
    assert status["metrics"]["rewardMean"] == 0.25
    assert old.fenced
    assert old.patches_sent == 1
    new.report_metrics(StepMetrics(step=5, reward_mean=0.4))
    assert read_run(k8s, namespace, "mine")["status"]["progress"]["step"] == 5


def test_an_attempt_the_operator_counts_after_it_started_keeps_reporting(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    operator_writes(k8s, namespace, "mine", {"attempt": 1, "rayCluster": "mine-old11"})
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    runs = trainer_of(kubeconfig, namespace, "mine-new22")  # read before the operator saw its RayCluster
    assert runs.attempt == 1

    operator_writes(k8s, namespace, "mine", {"attempt": 2, "rayCluster": "mine-new22"})
    reporter = StatusReporter(runs.patch_status, total_steps=20, min_interval=0)
    reporter.report_metrics(StepMetrics(step=3, reward_mean=0.5))

    assert reporter.patches_sent == 1
    assert not reporter.fenced
    assert runs.attempt == 2
    assert read_run(k8s, namespace, "mine")["status"]["progress"]["step"] == 3


def test_kubectl_get_shows_the_reward_rounded_for_people(
    cluster: Any, k8s: Any, namespace: str, two_runs: tuple[str, str], tmp_path: Path
) -> None:
    operator_writes(k8s, namespace, "mine", {"attempt": 1, "rayCluster": "mine-a1b2c"})
    kubeconfig = per_run_kubeconfig(cluster, k8s, namespace, "mine", tmp_path)
    reporter = StatusReporter(trainer_of(kubeconfig, namespace, "mine-a1b2c").patch_status, min_interval=0.0)
    reporter.report_metrics(StepMetrics(step=7, reward_mean=0.74161297082901, kl_loss=0.0012345678))

    shown = cluster.kubectl("get", "trainingruns", "mine", "-n", namespace).stdout
    header, row = shown.splitlines()[:2]
    column = header.index("REWARD")  # kubectl aligns each value under its column's header; some are blank
    assert row[column:].split()[0] == "0.7416", shown
