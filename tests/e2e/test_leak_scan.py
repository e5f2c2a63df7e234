"""No secret value leaks from a run, whether it succeeds or fails with an error that quotes one.

Secrets with recognisable random values are created (the S3 one holds the local MinIO's keys: the demo's
trainer really uses them, through the Ray head's environment); a run trains to success, then a run whose
reward function raises with every secret it sees fails. Every object in the namespace but the Secrets
(sampled while the runs live: pods and the RayCluster go when a job ends), the operator's, KubeRay's, the
dashboard router's and the pod shim's logs, and the trainers' logs are searched for each value, plain and
base64: zero hits. The runs' own Ray tokens are searched for too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from localcluster.controlplane import LocalCluster
from localcluster.stack import DemoStack
from tests.e2e.test_training_runs import apply, run_manifest

# Everything a namespace holds that a run can make or touch, except Secrets (which hold the values by design).
KINDS = ",".join([
    "trainingruns.loka.dev", "rayjobs.ray.io", "rayclusters.ray.io", "pods", "services", "endpoints",
    "configmaps", "events", "jobs.batch", "workloads.kueue.x-k8s.io", "localqueues.kueue.x-k8s.io",
    "networkpolicies", "serviceaccounts", "roles", "rolebindings", "controllerrevisions",
])  # fmt: skip


@dataclass
class NamespaceSampler:
    """Dumps every object of the namespace every few seconds, in a thread, until stopped."""

    cluster: LocalCluster
    namespace: str
    dumps: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        done = self.cluster.kubectl("get", KINDS, "-n", self.namespace, "-o", "json", check=False)
        self.dumps.append(done.stdout)

    def run(self) -> None:
        while not self._stop.wait(3):
            self.sample()

    def __enter__(self) -> NamespaceSampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


def forms(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode()]


def leaks(values: dict[str, str], texts: dict[str, str]) -> list[str]:
    return [
        f"{what} in {where}"
        for what, value in values.items()
        for where, text in texts.items()
        if any(form in text for form in forms(value))
    ]


@pytest.fixture
def log_offsets(cluster: LocalCluster, stack: DemoStack) -> Iterator[dict[str, tuple[Path, int]]]:
    """The logs to search, and where each stood when the test began (only what the test's runs wrote counts)."""
    logs = {
        "operator log": stack.layout.logs / "loka-operator.log",
        "dashboard router log": stack.layout.logs / "dashboard-router.log",
        "pod shim log": stack.layout.logs / "pod-shim.log",
        "KubeRay log": cluster.layout.logs / "kuberay-operator.log",
    }
    yield {name: (path, path.stat().st_size if path.exists() else 0) for name, path in logs.items()}


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def ray_token(cluster: LocalCluster, namespace: str, run: str) -> str:
    encoded = cluster.kubectl("-n", namespace, "get", "secret", f"loka-run-{run}-ray-token",
                              "-o", "jsonpath={.data.auth_token}").stdout  # fmt: skip
    return base64.b64decode(encoded).decode()


def test_no_secret_value_leaks_from_a_run_that_succeeds_or_one_that_fails_quoting_them(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, log_offsets: dict[str, tuple[Path, int]]
) -> None:
    ns = e2e_namespace
    values = {
        "S3 secret key": cluster.env["AWS_SECRET_ACCESS_KEY"],  # random per local cluster
        "W&B key": f"lokaleak-wandb-{secrets.token_hex(16)}",
        "HF token": f"lokaleak-hf-{secrets.token_hex(16)}",
    }
    data = {"wandb-api-key": forms(values["W&B key"])[1], "hf-token": forms(values["HF token"])[1]}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "loka-secrets", "namespace": ns}, "data": data}
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(secret))
    references = {
        "tracking": {"wandb": {"project": "leak-scan", "mode": "disabled",
                               "apiKey": {"secret": "loka-secrets", "key": "wandb-api-key"}}},
        "huggingface": {"token": {"secret": "loka-secrets", "key": "hf-token"}},
    }  # fmt: skip

    with NamespaceSampler(cluster, ns) as objects:
        ok = apply(cluster, run_manifest(ns, "leak-ok", training={"maxSteps": 2}, checkpoints={"every": 2},
                                         **references))  # fmt: skip
        ok.until(lambda s: s.get("phase") == "Running", timeout=180, what="phase Running")
        values["leak-ok Ray token"] = ray_token(cluster, ns, "leak-ok")
        ok.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="phase Succeeded")

        bad = apply(cluster, run_manifest(ns, "leak-bad", maxRestarts=0, **references,
                                          reward={"function": "loka_e2e_rewards:quote_the_credentials"}))  # fmt: skip
        bad.until(lambda s: s.get("phase") in ("Running", "Failed"), timeout=180, what="the run to start")
        values["leak-bad Ray token"] = ray_token(cluster, ns, "leak-bad")
        failed = bad.until(lambda s: s.get("phase") == "Failed", timeout=600, what="phase Failed")

    # The attack happened: the reward function quoted the S3 key, and what reached status says so, redacted.
    assert "cannot score" in failed["message"] and "<AWS_SECRET_ACCESS_KEY>" in failed["message"], failed["message"]
    trainer_logs = {}
    for run in ("leak-ok", "leak-bad"):
        rayjob = json.loads(cluster.kubectl("-n", ns, "get", "rayjob", run, "-o", "json").stdout)
        trainer_logs[f"{run} trainer log"] = stack.ray_job_logs(rayjob["status"]["jobId"])
    assert "<AWS_SECRET_ACCESS_KEY>" in trainer_logs["leak-bad trainer log"]

    texts = {f"namespace objects, sample {i}": dump for i, dump in enumerate(objects.dumps)}
    texts |= {name: read_from(path, offset) for name, (path, offset) in log_offsets.items()}
    texts |= trainer_logs
    texts |= {f"{run} status, as seen": json.dumps(watch.seen) for run, watch in (("leak-ok", ok), ("leak-bad", bad))}
    assert len(objects.dumps) >= 5 and any('"kind": "RayCluster"' in dump for dump in objects.dumps)
    assert leaks(values, texts) == []

    # KubeRay submitted and polled each job with the run's own Ray token (it holds the run's Secret's value).
    router = texts["dashboard router log"]
    for run in ("leak-ok", "leak-bad"):
        fingerprint = hashlib.sha256(values[f"{run} Ray token"].encode()).hexdigest()[:12]
        assert re.search(rf"POST /api/jobs/ \(for {run}\S*, token sha256:{fingerprint}\) -> 200", router), run
