"""`loka` against the real local control plane (API server, KubeRay, Kueue, this session's operator) and MinIO.

Each test runs the command as a user would (`loka …` in-process through its `main`, the console script where the
exit code and streams matter) and asserts what the user sees and what the cluster then holds. `logs` and
`dashboard` need a real Ray head: tests/e2e/test_cli_loop.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.operator_process import OperatorProcess
from loka_cli.main import main
from loka_operator.status_writer import SETTLE_SECONDS
from tests.operator.conftest import drive_rayjob, eventually, run_manifest, wait_phase
from tests.operator.kube import Kube

LOKA = str(Path(sys.executable).with_name("loka"))


@pytest.fixture
def loka(cluster: LocalCluster, ns: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """`loka ARGS -n <ns>` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--kubeconfig", str(cluster.kubeconfig), "-n", ns])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def finish_when_running(kube: Kube, ns: str, name: str, job_status: str) -> None:
    """The Ray job's end, as the operator tests drive it, once the run runs."""
    wait_phase(kube, ns, name, "Running")
    drive_rayjob(kube, ns, name, "Complete", job_status)


def write_run(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    path = tmp_path / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_init_writes_a_run_the_api_server_accepts(
    cluster: LocalCluster, ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loka: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "LOKA_DATA=s3://loka/datasets/math/\nAWS_ENDPOINT_URL=http://minio.minio:9000\n"
        "AWS_ACCESS_KEY_ID=id\nAWS_SECRET_ACCESS_KEY=s\nWANDB_API_KEY=w\nHF_TOKEN=h\nSLACK_WEBHOOK_URL=http://x\n"
    )
    code, out, _ = loka("init", "qwen-math", "--gpus", "8", "--workers", "2", "--queue", "team-a")
    assert code == 0, out
    text = (tmp_path / "qwen-math.yaml").read_text()
    assert "# " in text  # commented
    run = yaml.safe_load(text)
    assert run["metadata"] == {"name": "qwen-math", "namespace": ns}
    spec = run["spec"]
    assert spec["data"] == {"train": "s3://loka/datasets/math/train.parquet",
                            "validation": "s3://loka/datasets/math/validation.parquet",
                            "promptKey": "prompt", "maxPromptLength": 512, "maxResponseLength": 1024}  # fmt: skip
    assert spec["storage"] == {"endpoint": "http://minio.minio:9000", "credentialsSecret": "loka-s3"}
    assert spec["tracking"]["wandb"]["apiKey"] == {"secret": "loka-secrets", "key": "wandb-api-key"}
    assert spec["notifications"]["slack"]["webhook"] == {"secret": "loka-secrets", "key": "slack-webhook"}
    assert spec["queue"] == {"name": "team-a"}
    # The API server's schema and CEL rules accept it as written.
    code, out, err = loka("submit", "-f", "qwen-math.yaml", "--dry-run")
    assert code == 0, err
    assert "validated (server dry run)" in out
    # Not overwritten without --force; a CPU run for trying things out.
    assert loka("init", "qwen-math")[0] == 2
    assert loka("init", "qwen-math", "--gpus", "0", "--force")[0] == 0
    assert yaml.safe_load((tmp_path / "qwen-math.yaml").read_text())["spec"]["engine"] == "trl"


def test_secrets_sync_writes_the_run_secrets_and_prints_key_names_only(
    kube: Kube, ns: str, tmp_path: Path, loka: Any
) -> None:
    env = tmp_path / "team.env"
    env.write_text(
        "WANDB_API_KEY=wandb-value-1\nHF_TOKEN=hf-value-1\nAWS_ACCESS_KEY_ID=key-id\nAWS_SECRET_ACCESS_KEY=s3-value\n"
    )
    code, out, err = loka("secrets", "sync", "--from", str(env))
    assert code == 0, err
    assert "secret/loka-secrets: wandb-api-key (added), hf-token (added)" in out
    assert "secret/loka-s3: AWS_ACCESS_KEY_ID (added), AWS_SECRET_ACCESS_KEY (added)" in out
    assert not any(v in out + err for v in ("wandb-value-1", "hf-value-1", "s3-value"))
    stored = kube.core.read_namespaced_secret("loka-secrets", ns).data
    assert base64.b64decode(stored["hf-token"]).decode() == "hf-value-1"
    env.write_text("WANDB_API_KEY=wandb-value-2\nHF_TOKEN=hf-value-1\n")
    code, out, _ = loka("secrets", "sync", "--from", str(env))
    assert "wandb-api-key (updated), hf-token (unchanged)" in out
    assert "secret/loka-s3: skipped" in out
    assert (
        base64.b64decode(kube.core.read_namespaced_secret("loka-s3", ns).data["AWS_SECRET_ACCESS_KEY"]) == b"s3-value"
    )


def test_dataset_uploads_both_splits_to_minio_or_nothing(cluster: LocalCluster, tmp_path: Path, loka: Any) -> None:
    import boto3

    env = cluster.env
    envfile = tmp_path / ".env"
    envfile.write_text(
        "".join(f"{k}={env[k]}\n" for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    )
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"id": i, "prompt": f"{i}+{i}?", "ground_truth": 2 * i} for i in range(50)]))
    prefix = f"cli-test/{tmp_path.name}"
    code, out, err = loka("dataset", str(tasks), "-o", str(tmp_path / "data"), "--upload", f"s3://{S3_BUCKET}/{prefix}/",
                          "--env-file", str(envfile))  # fmt: skip
    assert code == 0, err
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)["Contents"])
    assert keys == [f"{prefix}/train.parquet", f"{prefix}/validation.parquet"]
    assert f"uploaded s3://{S3_BUCKET}/{prefix}/train.parquet" in out

    tasks.write_text('[{"id": 1, "prompt": "ok"},\n {"id": 2}]')
    code, _, err = loka("dataset", str(tasks), "-o", str(tmp_path / "bad"), "--upload", f"s3://{S3_BUCKET}/{prefix}-bad/",
                        "--env-file", str(envfile))  # fmt: skip
    assert code == 2
    assert f"{tasks}:2: prompt: missing" in err
    assert "Contents" not in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}-bad")


def test_submit_wait_follows_the_run_to_success_and_status_shows_it(
    operator: OperatorProcess, kube: Kube, ns: str, tmp_path: Path, loka: Any
) -> None:
    path = write_run(tmp_path, run_manifest("follow-me", ns))
    # The Ray job's end, as the operator tests drive it, once the run runs.
    driver = threading.Thread(target=finish_when_running, args=(kube, ns, "follow-me", "SUCCEEDED"), daemon=True)
    driver.start()
    code, out, err = loka("submit", "-f", str(path), "--wait", "--timeout", "180")
    assert code == 0, out + err
    assert f"trainingrun.loka.dev/follow-me created in namespace {ns}" in out
    assert "Running" in out and out.rstrip().splitlines()[-1].split("]", 1)[1].strip().startswith("Succeeded")

    code, out, _ = loka("status")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "PHASE", "STEP", "REWARD", "CHECKPOINT", "QUEUE", "ATTEMPT", "AGE"]
    assert out.splitlines()[1].split()[:2] == ["follow-me", "Succeeded"]
    code, out, _ = loka("status", "follow-me", "-o", "json")
    assert json.loads(out)["status"]["phase"] == "Succeeded"
    # Resubmitting the same file is an update, not an error.
    code, out, _ = loka("submit", "-f", str(path))
    assert (code, "configured" in out) == (0, True)


def test_a_failed_run_exits_1_and_says_where_to_look(
    operator: OperatorProcess, kube: Kube, ns: str, tmp_path: Path, cluster: LocalCluster
) -> None:
    path = write_run(tmp_path, run_manifest("doomed", ns))
    driver = threading.Thread(target=finish_when_running, args=(kube, ns, "doomed", "FAILED"), daemon=True)
    driver.start()
    done = subprocess.run([LOKA, "submit", "-f", str(path), "--wait", "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"see why: loka logs doomed -n {ns}" in done.stdout


def test_queued_run_shows_its_position_and_kueues_reason(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str, loka: Any
) -> None:
    queue = {"queue": {"name": "team-a", "clusterQueue": gpu_queue}}
    kube.create_run(run_manifest("first", ns, **queue))
    wait_phase(kube, ns, "first", "Running")
    kube.create_run(run_manifest("second", ns, **queue))
    wait_phase(kube, ns, "second", "Queued")
    eventually(lambda: "position 1 of 1" in loka("status", "second")[1], timeout=30, what="the queue position")
    # Kueue's reason reaches the run's status with its next write that matters, or once it has held for the
    # operator's settle time (a change of words alone is not written at once: loka_operator.status_writer).
    eventually(
        lambda: "insufficient unused quota for nvidia.com/gpu" in loka("status", "second")[1],
        timeout=SETTLE_SECONDS + 30,
        what="Kueue's reason in the run's status",
    )
    out = loka("status", "second")[1]
    assert "in LocalQueue team-a (estimated from this namespace): " in out


def test_suspend_resume_and_delete(operator: OperatorProcess, kube: Kube, ns: str, loka: Any) -> None:
    kube.create_run(run_manifest("pause-me", ns))
    wait_phase(kube, ns, "pause-me", "Running")
    code, out, _ = loka("suspend", "pause-me")
    assert code == 0 and "suspended" in out
    wait_phase(kube, ns, "pause-me", "Suspended")
    assert loka("suspend", "pause-me")[1].startswith("trainingrun.loka.dev/pause-me already suspended")
    assert loka("resume", "pause-me")[0] == 0
    wait_phase(kube, ns, "pause-me", "Running", timeout=120)
    code, out, _ = loka("delete", "pause-me")
    assert code == 0 and "deleted" in out
    assert kube.run(ns, "pause-me") is None
    code, _, err = loka("status", "pause-me")
    assert code == 3
    assert f"no TrainingRun 'pause-me' in namespace '{ns}'" in err and f"loka status -n {ns}" in err


def test_checkpoints_lists_complete_ones_and_downloads_verified(  # noqa: PLR0917
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str, tmp_path: Path, loka: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from loka_api.manifest import Writer
    from loka_api.storage import ObjectStore
    from loka_trainer.checkpoints import CheckpointStore

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, cluster.env[key])
    uri = f"s3://{S3_BUCKET}/cli-ckpt-{ns}/"
    created = kube.create_run(run_manifest("saved", ns, checkpoints={"uri": uri, "every": 1, "keep": 3}))
    store = CheckpointStore.for_run(
        ObjectStore(),
        uri,
        namespace=ns,
        run_name="saved",
        uid=created["metadata"]["uid"],
        keep=3,
        writer=Writer(1, "t"),
    )
    store.claim()
    for step in (1, 2):  # written the way the trainer writes them
        folder = tmp_path / f"step{step}"
        (folder / "actor").mkdir(parents=True)
        (folder / "actor" / "model.bin").write_bytes(os.urandom(4096) * step)
        store.upload(step, folder)
    store.begin(3)  # an upload in progress: files without a manifest
    store.store.put_bytes(store.step_uri(3).join("actor/model.bin"), b"half")

    code, out, err = loka("checkpoints", "saved")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("2", "1")]
    assert "latest" in out.splitlines()[2]
    code, out, _ = loka("checkpoints", "saved", "-o", "json")
    assert [c["step"] for c in json.loads(out)] == [1, 2]

    code, out, err = loka("checkpoints", "saved", "--download", "2", str(tmp_path / "weights"))
    assert code == 0, err
    assert (tmp_path / "weights" / "global_step_2" / "actor" / "model.bin").read_bytes() == (
        tmp_path / "step2" / "actor" / "model.bin"
    ).read_bytes()
    assert "every file's checksum verified" in out
    assert loka("checkpoints", "saved", "--download", "3", str(tmp_path / "w3"))[0] == 3  # incomplete: not offered

    store.store.put_bytes(store.step_uri(1).join("actor/model.bin"), b"corrupted")
    code, _, err = loka("checkpoints", "saved", "--download", "1", str(tmp_path / "w1"))
    assert code == 1
    assert "actor/model.bin does not match the manifest" in err
    assert not any((tmp_path / "w1").iterdir())


def test_kubectl_loka_is_the_same_command_with_clear_errors(cluster: LocalCluster, tmp_path: Path) -> None:
    kubectl_loka = Path(sys.executable).with_name("kubectl-loka")
    done = subprocess.run([str(kubectl_loka), "--help"], capture_output=True, text=True, check=False)
    for command in ("init", "secrets", "dataset", "submit", "status", "logs", "dashboard", "checkpoints",
                    "suspend", "resume", "delete", "completion"):  # fmt: skip
        assert f"    {command}" in done.stdout
    unreachable = tmp_path / "kubeconfig"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable.write_text(yaml.safe_dump(config))
    done = subprocess.run([LOKA, "status", "--kubeconfig", str(unreachable)], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 4
    assert "cannot reach the API server at https://127.0.0.1:1" in done.stderr and "kubectl cluster-info" in done.stderr
    done = subprocess.run([LOKA, "status", "--kubeconfig", str(cluster.kubeconfig), "--context", "nope"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 4 and "no context 'nope'" in done.stderr
