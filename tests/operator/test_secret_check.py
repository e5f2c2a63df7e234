"""The operator checks that a run's Secret keys exist without Secret values reaching it.

The reconciler runs in this process against the real API server, through a client that keeps every answer the
API server sends it: the trace is searched for the values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import LocalCluster
from loka_api import TrainingRun
from loka_operator.config import OperatorConfig
from loka_operator.credentials import login
from loka_operator.kube import JSON, KubeClient
from loka_operator.reconcile import Reconciler
from loka_operator.status import Problem
from tests.operator.conftest import run_manifest


class TracingClient(KubeClient):
    """The operator's client, keeping each answer (as the operator received it) in `trace`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trace: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        answer = await super().request(method, path, **kwargs)
        self.trace.append(f"{method} {path} {json.dumps(answer)}")
        return answer


def check(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, run: dict[str, Any]) -> tuple[Problem | None, str]:
    """The reconciler's Secret check for `run`; returns its outcome and everything the API server answered."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    async def missing() -> tuple[Problem | None, str]:
        client = TracingClient(login())
        try:
            problem = await Reconciler(client, OperatorConfig())._missing_secrets(TrainingRun.model_validate(run))
        finally:
            await client.close()
        return problem, "\n".join(client.trace)

    return asyncio.run(missing())


def secret_run(namespace: str) -> dict[str, Any]:
    run = run_manifest(
        "checked",
        namespace,
        storage={"endpoint": "http://minio.example:9000", "credentialsSecret": "loka-s3"},
        tracking={"wandb": {"project": "p", "apiKey": {"secret": "loka-secrets", "key": "wandb-api-key"}}},
        huggingface={"token": {"secret": "loka-secrets", "key": "hf-token"}},
    )
    run["metadata"]["uid"] = "0"
    return run


def values() -> dict[str, str]:
    return {name: f"lokaleak-{name}-{secrets.token_hex(12)}" for name in ("keyid", "s3", "wandb", "hf")}


def create_secrets(
    cluster: LocalCluster, namespace: str, value: dict[str, str], *, tmp_path: Path, applied_as: str = "data"
) -> None:
    """One Secret as `kubectl create secret` makes it, the other by server-side apply (as GitOps tools do)."""
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "loka-s3",
        f"--from-literal=AWS_ACCESS_KEY_ID={value['keyid']}", f"--from-literal=AWS_SECRET_ACCESS_KEY={value['s3']}",
    )  # fmt: skip
    data = {"wandb-api-key": value["wandb"], "hf-token": value["hf"]}
    if applied_as == "data":
        data = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "loka-secrets", "namespace": namespace},
        applied_as: data,
    }
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(yaml.safe_dump(applied))
    cluster.kubectl("apply", "--server-side", "-f", str(manifest))
    manifest.unlink()


def test_secret_keys_are_checked_without_any_value_reaching_the_operator(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    value = values()
    create_secrets(cluster, namespace, value, tmp_path=tmp_path)

    problem, trace = check(cluster, monkeypatch, secret_run(namespace))

    assert problem is None
    assert "/secrets/loka-s3" in trace and "/secrets/loka-secrets" in trace
    assert [name for name, v in value.items() if v in trace or base64.b64encode(v.encode()).decode() in trace] == []


@pytest.mark.parametrize("applied_as", ["data", "stringData"])
def test_a_missing_key_is_still_named(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, applied_as: str
) -> None:
    """Also when server-side apply recorded the key as applied through stringData, and then it was removed."""
    value = values()
    create_secrets(cluster, namespace, value, tmp_path=tmp_path, applied_as=applied_as)
    cluster.kubectl("-n", namespace, "patch", "secret", "loka-secrets", "--type=json",
                    "-p", '[{"op": "remove", "path": "/data/hf-token"}]')  # fmt: skip

    problem, _ = check(cluster, monkeypatch, secret_run(namespace))

    assert problem is not None
    assert "Secret 'loka-secrets' has no key 'hf-token'" in problem.message


def test_keys_are_found_when_the_secrets_managed_fields_were_stripped(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    create_secrets(cluster, namespace, values(), tmp_path=tmp_path)
    for name in ("loka-s3", "loka-secrets"):
        cluster.kubectl("-n", namespace, "patch", "secret", name, "--type=merge",
                        "-p", '{"metadata": {"managedFields": [{}]}}')  # fmt: skip

    problem, _ = check(cluster, monkeypatch, secret_run(namespace))

    assert problem is None
