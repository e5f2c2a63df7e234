"""Fixtures for the trainer's integration tests: MinIO through the cluster fixture, checkpoint-shaped folders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loka_trainer.storage import ObjectStore, S3Uri

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
    account = f"{run_name}-trainer"
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
