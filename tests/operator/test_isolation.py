"""A run's reach, on the real control plane, with the pods KubeRay really builds from the operator's RayJob:

- which pod holds which secret, and which container an API token (docs/secrets.md has the table);
- the run's NetworkPolicy, evaluated against the labels KubeRay really sets (no network plugin runs here);
- Ray's token authentication: a real Ray head started with what the head pod gets (the kubelet's part is
  played here: `secretKeyRef` resolved from the run's token Secret) refuses every call without the token.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster.operator_process import OperatorProcess, free_port
from loka_api.contract import SERVICE_ACCOUNT_DIR
from tests.operator.conftest import K8S_JOB_PREFIX, eventually, fresh_namespace, run_manifest
from tests.operator.kube import Kube
from tests.operator.networkpolicy import Endpoint, admits, isolated

RUN = "isolated"
NEIGHBOUR = "neighbour"
TOKEN_SECRET = f"loka-run-{RUN}-ray-token"
# The kube-apiserver's ServiceAccount admission plugin names the pod-wide token volume so.
AUTOMOUNTED_VOLUME_PREFIX = "kube-api-access-"


def run_with_secrets(name: str, namespace: str) -> dict[str, Any]:
    return run_manifest(
        name,
        namespace,
        engine="trl",  # no GPUs needed; which pod gets which secret does not depend on the engine
        resources={"workers": 1, "gpusPerWorker": 0, "head": {"cpu": "1", "memory": "1Gi"},
                   "worker": {"cpu": "1", "memory": "1Gi"}},
        storage={"endpoint": "http://minio.example:9000", "credentialsSecret": "loka-s3"},
        tracking={"wandb": {"project": "p", "apiKey": {"secret": "loka-secrets", "key": "wandb-api-key"}}},
        huggingface={"token": {"secret": "loka-secrets", "key": "hf-token"}},
    )  # fmt: skip


def create_secrets(kube: Kube, namespace: str) -> None:
    def value(what: str) -> str:
        return f"lokaleak-{what}-{secrets.token_hex(12)}"

    for name, data in {
        "loka-s3": {"AWS_ACCESS_KEY_ID": value("keyid"), "AWS_SECRET_ACCESS_KEY": value("s3")},
        "loka-secrets": {"wandb-api-key": value("wandb"), "hf-token": value("hf")},
    }.items():
        kube.core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})


@dataclass
class RunPods:
    """The run's pods as KubeRay made them (API objects as dicts), by role."""

    namespace: str
    head: dict[str, Any]
    worker: dict[str, Any]
    submitter: dict[str, Any]
    neighbour_head: dict[str, Any]


def pod_role(pod: dict[str, Any]) -> str:
    labels = pod["metadata"].get("labels") or {}
    return labels.get("ray.io/node-type") or ("submitter" if "batch.kubernetes.io/job-name" in labels else "")


def run_pods(kube: Kube, namespace: str, run: str) -> dict[str, dict[str, Any]]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"loka.dev/run={run}").items
    return {pod_role(p): p for p in (kube.api.sanitize_for_serialization(pod) for pod in pods)}


@pytest.fixture(scope="module")
def pods(k8s_job_operator: OperatorProcess, kube: Kube) -> Iterator[RunPods]:
    """Two runs with every kind of secret in one namespace, in K8sJobMode (a submitter pod too), unqueued."""
    namespaces = fresh_namespace(kube, K8S_JOB_PREFIX)
    ns = next(namespaces)
    create_secrets(kube, ns)
    for name in (RUN, NEIGHBOUR):
        kube.create_run(run_with_secrets(name, ns))
    mine = eventually(
        lambda: (found := run_pods(kube, ns, RUN)).keys() >= {"head", "worker", "submitter"} and found,
        timeout=120,
        what="head, worker and submitter pods of the run",
    )
    theirs = eventually(lambda: run_pods(kube, ns, NEIGHBOUR).get("head"), timeout=120, what="the neighbour's head")
    yield RunPods(ns, mine["head"], mine["worker"], mine["submitter"], theirs)
    next(namespaces, None)


def secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every variable a container gets from a Secret: name -> (secret, key)."""
    return {
        env["name"]: (ref["name"], ref["key"])
        for env in container.get("env") or []
        if (ref := (env.get("valueFrom") or {}).get("secretKeyRef"))
    }


def token_projections(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Volumes carrying a ServiceAccount token: volume name -> its serviceAccountToken projection."""
    return {
        volume["name"]: source["serviceAccountToken"]
        for volume in pod["spec"].get("volumes") or []
        for source in (volume.get("projected") or {}).get("sources") or []
        if "serviceAccountToken" in source
    }


def test_each_pod_holds_only_the_secrets_its_processes_use(pods: RunPods) -> None:
    s3 = {"AWS_ACCESS_KEY_ID": ("loka-s3", "AWS_ACCESS_KEY_ID"),
          "AWS_SECRET_ACCESS_KEY": ("loka-s3", "AWS_SECRET_ACCESS_KEY")}  # fmt: skip
    wandb = {"WANDB_API_KEY": ("loka-secrets", "wandb-api-key")}
    hf = {"HF_TOKEN": ("loka-secrets", "hf-token")}
    ray_token = {"RAY_AUTH_TOKEN": (TOKEN_SECRET, "auth_token")}  # injected by KubeRay
    held = {
        "head": secret_env(pods.head["spec"]["containers"][0]),
        "worker": secret_env(pods.worker["spec"]["containers"][0]),
        "submitter": secret_env(pods.submitter["spec"]["containers"][0]),
    }
    assert held == {
        "head": {**s3, **wandb, **hf, **ray_token},  # stages, reports, tracks (verl's TaskRunner is pinned here)
        "worker": {**s3, **hf, **ray_token},  # stages and uploads shards, loads the model; no tracker runs here
        "submitter": ray_token,  # submits the job; nothing of the run's
    }
    for pod in (pods.head, pods.worker, pods.submitter):
        for container in pod["spec"]["containers"] + (pod["spec"].get("initContainers") or []):
            plain = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
            assert plain.get("RAY_AUTH_MODE", "token") == "token"
            assert not [name for name, value in plain.items() if value.startswith("lokaleak-")]
        assert {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["RAY_AUTH_MODE"] == "token"


def test_the_ray_token_is_the_rayjobs_own_and_kuberay_hands_it_to_every_ray_container(
    kube: Kube, pods: RunPods
) -> None:
    secret = kube.core.read_namespaced_secret(TOKEN_SECRET, pods.namespace)
    rayjob = kube.rayjob(pods.namespace, RUN) or {}
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("RayJob", RUN, rayjob["metadata"]["uid"])
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == (kube.run(pods.namespace, RUN) or {})["metadata"]["uid"]
    assert secret.immutable is True
    assert len(base64.b64decode(secret.data["auth_token"])) >= 40
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}


def test_only_the_heads_trainer_container_holds_an_api_token_and_only_for_minutes(pods: RunPods) -> None:
    for pod in (pods.head, pods.worker, pods.submitter):
        spec = pod["spec"]
        assert spec.get("automountServiceAccountToken") is False, pod["metadata"]["name"]
        assert not [v for v in spec.get("volumes") or [] if v["name"].startswith(AUTOMOUNTED_VOLUME_PREFIX)]
    assert token_projections(pods.worker) == {} and token_projections(pods.submitter) == {}

    (volume, projection), *others = token_projections(pods.head).items()
    assert others == []
    assert projection["expirationSeconds"] == 600
    assert pods.head["spec"]["serviceAccountName"] == f"loka-run-{RUN}"
    mounted_in = {
        container["name"]: mount
        for container in pods.head["spec"]["containers"] + (pods.head["spec"].get("initContainers") or [])
        for mount in container.get("volumeMounts") or []
        if mount["name"] == volume
    }
    assert list(mounted_in) == ["ray-head"]
    assert mounted_in["ray-head"]["mountPath"] == SERVICE_ACCOUNT_DIR
    assert mounted_in["ray-head"]["readOnly"] is True


# ------------------------------------------------------------------------------------ NetworkPolicy

KUBERAY_NAMESPACE = "default"  # the operator's setting, KubeRay's own default
# Ray's ports on a node: KubeRay's Service ports, the dashboard agent, a node's random object/node manager
# port (any port: here one from Linux's ephemeral range) and both ends of the worker port range.
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "serve": 8000,
             "dashboard-agent": 52365, "object-manager": 40123, "worker-min": 10002, "worker-max": 19999}  # fmt: skip
DASHBOARD_ONLY = {"dashboard"}


def labels(pod: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = pod["metadata"]["labels"]
    return found


def test_network_policy_lets_only_the_runs_pods_and_kuberay_reach_ray(kube: Kube, pods: RunPods) -> None:
    ns = pods.namespace
    listed = client.NetworkingV1Api(kube.api).list_namespaced_network_policy(ns).items
    policies = [kube.api.sanitize_for_serialization(p) for p in listed]
    (policy,) = [p for p in policies if p["metadata"]["name"] == f"loka-run-{RUN}"]
    run_uid = (kube.run(ns, RUN) or {})["metadata"]["uid"]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == run_uid

    head, worker, submitter = (Endpoint(ns, labels(p)) for p in (pods.head, pods.worker, pods.submitter))
    neighbour = Endpoint(ns, labels(pods.neighbour_head))
    # The same run name in another namespace: its pods carry the very same labels.
    namesake = Endpoint(f"{ns}-other", labels(pods.head))
    kuberay = Endpoint(KUBERAY_NAMESPACE, {"app.kubernetes.io/name": "kuberay-operator"})
    loka_operator = Endpoint("loka-system", {"app.kubernetes.io/name": "loka-operator"})

    assert isolated(policies, head) and isolated(policies, worker) and isolated(policies, submitter)
    # peer -> the Ray ports it may open on the run's head and workers (every other port is refused)
    expected = {
        "the run's head": (head, set(RAY_PORTS)),
        "the run's worker": (worker, set(RAY_PORTS)),
        "the run's submitter": (submitter, set(RAY_PORTS)),
        "the KubeRay operator's namespace": (kuberay, DASHBOARD_ONLY),
        "another run in the namespace": (neighbour, set()),
        "the same run name in another namespace": (namesake, set()),
        "the Loka operator": (loka_operator, set()),
    }
    table = {
        (peer, target_name): {port for port, number in RAY_PORTS.items() if admits(policies, target, source, number)}
        for peer, (source, _) in expected.items()
        for target_name, target in (("head", head), ("worker", worker))
    }
    assert table == {(peer, t): ports for peer, (_, ports) in expected.items() for t in ("head", "worker")}
    # The neighbour's own pods are isolated by its own policy, which admits its pods and not ours.
    assert not admits(policies, neighbour, head, RAY_PORTS["gcs"])


def test_a_secret_named_like_the_runs_ray_token_is_never_adopted(
    k8s_job_operator: OperatorProcess, kube: Kube, k8s_ns: str
) -> None:
    planted = base64.b64encode(b"a-token-someone-else-knows").decode()
    kube.core.create_namespaced_secret(k8s_ns, {"metadata": {"name": TOKEN_SECRET}, "data": {"auth_token": planted}})
    kube.create_run(run_manifest(RUN, k8s_ns))  # no Ray pod of the run may ever start with a known token

    eventually(lambda: "NameConflict" in str(kube.status(k8s_ns, RUN).get("conditions")), what="a NameConflict")
    assert TOKEN_SECRET in kube.status(k8s_ns, RUN)["message"]
    assert kube.rayjob(k8s_ns, RUN) is None
    assert kube.core.read_namespaced_secret(TOKEN_SECRET, k8s_ns).data == {"auth_token": planted}


# ------------------------------------------------------------------------------------ Ray's token auth


@dataclass
class RayHead:
    dashboard: str
    gcs: str
    token: str


def resolve_env(kube: Kube, namespace: str, container: dict[str, Any]) -> dict[str, str]:
    """What the kubelet puts into the container's environment (plain values and secretKeyRefs)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif ref := (entry.get("valueFrom") or {}).get("secretKeyRef"):
            secret = kube.core.read_namespaced_secret(ref["name"], namespace)
            env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
    return env


@pytest.fixture(scope="module")
def ray_head(kube: Kube, pods: RunPods) -> Iterator[RayHead]:
    """A real Ray head with the head container's Ray auth environment, on free ports of this machine."""
    env = resolve_env(kube, pods.namespace, pods.head["spec"]["containers"][0])
    assert env["RAY_AUTH_MODE"] == "token"
    ports = {name: free_port() for name in ("gcs", "dashboard", "agent", "client", "worker1", "worker2")}
    temp = Path(f"/tmp/lokaray-{uuid.uuid4().hex[:6]}")  # Ray's socket paths must stay short
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={ports['gcs']}",
        f"--dashboard-port={ports['dashboard']}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={ports['agent']}", f"--ray-client-server-port={ports['client']}",
        f"--worker-port-list={ports['worker1']},{ports['worker2']}", "--num-cpus=1",
        f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    ray_env = {**clean_env(), "RAY_AUTH_MODE": env["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"]}
    log = (temp.with_suffix(".log")).open("wb")
    head = subprocess.Popen(command, env=ray_env, stdout=log, stderr=subprocess.STDOUT)
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        eventually(
            lambda: head.poll() is not None or http_status(f"{dashboard}/api/jobs/") == 401,
            timeout=300,
            interval=1,
            what="the Ray head's dashboard",
        )
        assert head.poll() is None, temp.with_suffix(".log").read_text()[-3000:]
        yield RayHead(dashboard, f"127.0.0.1:{ports['gcs']}", env["RAY_AUTH_TOKEN"])
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        temp.with_suffix(".log").unlink(missing_ok=True)


def clean_env() -> dict[str, str]:
    """A pod's environment without the token: no RAY_AUTH_* and a HOME without ~/.ray/auth_token."""
    home = Path(f"/tmp/lokaray-home-{uuid.uuid4().hex[:6]}")
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**keep, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


def http_status(url: str, *, method: str = "GET", token: str | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def in_background(command: list[str], env: dict[str, str]) -> tuple[threading.Thread, list[Any]]:
    """Run `command` in a thread; its CompletedProcess lands in the returned list."""
    done: list[Any] = []

    def run() -> None:
        done.append(subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def test_ray_refuses_job_submission_and_gcs_clients_without_the_runs_token(ray_head: RayHead) -> None:
    bin_dir = Path(sys.executable).parent
    # A driver joining the GCS (what any pod could do to run code next to the run's credentials); slow to
    # give up, so it runs while the HTTP attacks are tried.
    join = f"import ray; ray.init(address={ray_head.gcs!r}, log_to_driver=False); print('JOINED')"
    gcs, gcs_attempt = in_background([str(bin_dir / "python"), "-c", join], clean_env())

    job = b'{"entrypoint": "echo pwned"}'
    assert http_status(f"{ray_head.dashboard}/api/jobs/", method="POST", body=job) == 401
    assert http_status(f"{ray_head.dashboard}/api/jobs/", method="POST", body=job, token="guessed") == 403
    assert http_status(f"{ray_head.dashboard}/api/jobs/") == 401
    submit = subprocess.run(
        [str(bin_dir / "ray"), "job", "submit", f"--address={ray_head.dashboard}", "--", "echo", "pwned"],
        env=clean_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert submit.returncode != 0
    assert "Authentication required" in submit.stdout + submit.stderr

    gcs.join(timeout=200)
    (refused,) = gcs_attempt
    assert refused.returncode != 0 and "JOINED" not in refused.stdout
    assert "InvalidAuthToken" in refused.stderr + refused.stdout
    # The control: with the run's token the same head answers, so the refusals above are Ray's auth.
    assert http_status(f"{ray_head.dashboard}/api/jobs/", token=ray_head.token) == 200
