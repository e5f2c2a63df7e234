"""Fixtures for the trainer's integration tests: MinIO through the cluster fixture, checkpoint-shaped folders, and
`loka-trainer run` on a tiny local model against the API server and MinIO.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loka_api.dataset import build_dataset
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.tiny import build_tiny_model, write_tasks

BUCKET = "loka"


def write_verl_checkpoint(folder: Path, *, step: int, shard_bytes: int = 256 * 1024, world_size: int = 2) -> Path:
    """A folder shaped like verl's global_step_N (FSDP shards per rank, HF config, dataloader state)."""
    checkpoint = folder / f"global_step_{step}"
    actor = checkpoint / "actor"
    (actor / "huggingface").mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        for kind in ("model", "optim", "extra_state"):
            size = shard_bytes if kind != "extra_state" else 1024
            (actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt").write_bytes(os.urandom(size))
    (actor / "fsdp_config.json").write_text(f'{{"FSDP_version": 2, "world_size": {world_size}}}')
    (actor / "huggingface" / "config.json").write_text('{"model_type": "qwen2"}')
    (actor / "huggingface" / "tokenizer.json").write_text('{"version": "1.0"}')
    (checkpoint / "data.pt").write_bytes(os.urandom(2048))
    return checkpoint


@pytest.fixture
def s3_env(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The cluster's MinIO credentials in this process's environment (where the trainer reads them)."""
    env = {k: v for k, v in cluster.env.items() if k.startswith("AWS_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return env


@pytest.fixture
def object_store(s3_env: dict[str, str]) -> ObjectStore:
    return ObjectStore()


@pytest.fixture
def s3_prefix(object_store: ObjectStore, request: pytest.FixtureRequest) -> Iterator[S3Uri]:
    """A unique prefix in the loka bucket, emptied afterwards."""
    prefix = S3Uri(BUCKET, f"tests/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}")
    yield prefix
    object_store.delete_prefix(prefix)


# ----------------------------------------------------------------------------------- the API server

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_GROUP, RUN_VERSION, RUN_PLURAL = "loka.dev", "v1alpha1", "trainingruns"


@pytest.fixture(scope="session")
def trainingrun_crd(cluster: Any) -> None:
    """The operator's generated CRD from crds/, applied and Established."""
    from localcluster.controlplane import wait_until

    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))

    def established() -> bool:
        result = cluster.kubectl(
            "get",
            "crd",
            f"{RUN_PLURAL}.{RUN_GROUP}",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            check=False,
        )
        return bool(result.stdout.strip() == "True")

    wait_until(established, timeout=30, what="the TrainingRun CRD to be Established")
    # What the chart installs beside it: the trainer's status writes must pass the operator's policy.
    import yaml

    from loka_api.admission import policy_manifests

    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(policy_manifests())
    )


def create_run(api: Any, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    from kubernetes import client

    body = {"apiVersion": f"{RUN_GROUP}/{RUN_VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}
    objects: Any = client.CustomObjectsApi(api)
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        RUN_GROUP, RUN_VERSION, namespace, RUN_PLURAL, body
    )
    return created


def read_run(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    objects: Any = client.CustomObjectsApi(api)
    body: dict[str, Any] = objects.get_namespaced_custom_object(RUN_GROUP, RUN_VERSION, namespace, RUN_PLURAL, name)
    return body


def per_run_kubeconfig(cluster: Any, api: Any, namespace: str, run_name: str, folder: Path) -> Path:
    """The operator's per-run access, mirrored: a ServiceAccount whose Role may only ``get`` this TrainingRun
    and ``patch`` its status; returns a kubeconfig holding a token minted for it (TokenRequest API).
    """
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    account = f"loka-run-{run_name}"  # the operator's name for it: the trainer-status policy applies
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": account},
            "rules": [
                {"apiGroups": [RUN_GROUP], "resources": [RUN_PLURAL], "resourceNames": [run_name], "verbs": ["get"]},
                {
                    "apiGroups": [RUN_GROUP],
                    "resources": [f"{RUN_PLURAL}/status"],
                    "resourceNames": [run_name],
                    "verbs": ["patch"],
                },
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": namespace}}],
        "current-context": account,
    }
    path = folder / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------- loka-trainer run on a tiny model

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


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
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


def s3_env_values_absent(output: str) -> bool:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    return not secret or secret not in output
