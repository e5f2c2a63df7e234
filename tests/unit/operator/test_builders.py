"""Pure builders: the RayJob, the trainer's RBAC and the LocalQueue a run asks for."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from loka_api import QueueSpec, TrainingRunSpec, contract
from loka_operator import naming
from loka_operator.builders import (
    RayJobSettings,
    build_local_queue,
    build_network_policy,
    build_ray_auth_secret,
    build_rayjob,
    build_role,
    build_role_binding,
    build_service_account,
    new_ray_token,
)

UID = "0f3c-uid"


def make_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-1.5B-Instruct"},
        "data": {"train": "s3://data/gsm8k/train.parquet"},
        "resources": {
            "workers": 2,
            "gpusPerWorker": 8,
            "head": {"cpu": "8", "memory": "32Gi"},
            "worker": {"cpu": "32", "memory": "256Gi"},
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "queue": {"name": "team-a", "clusterQueue": "gpu-cq", "priorityClass": "high"},
        "storage": {"endpoint": "http://minio.minio:9000", "credentialsSecret": "loka-s3"},
        "tracking": {"wandb": {"project": "orbital", "apiKey": {"secret": "loka-secrets", "key": "wandb-api-key"}}},
        "huggingface": {"token": {"secret": "loka-secrets", "key": "hf-token"}},
        "maxRestarts": 3,
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def rayjob(spec: TrainingRunSpec | None = None, mode: str = "K8sJobMode") -> dict[str, Any]:
    return build_rayjob(
        spec or make_spec(), run="qwen", namespace="team-a", uid=UID, settings=RayJobSettings(submission_mode=mode)
    )


def containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    if "submitterPodTemplate" in job["spec"]:
        templates.append(job["spec"]["submitterPodTemplate"])
    return [c for t in templates for c in t["spec"]["containers"]]


def test_rayjob_is_owned_by_the_run_and_queued_in_kueue() -> None:
    job = rayjob()
    meta = job["metadata"]
    assert meta["name"] == "qwen"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "loka.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "qwen",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][naming.KUEUE_QUEUE_LABEL] == "team-a"
    assert meta["labels"][naming.KUEUE_PRIORITY_LABEL] == "high"
    assert meta["labels"][naming.LABEL_RUN] == "qwen"
    # Kueue flips suspend on a queued RayJob; the builder must leave it alone.
    assert "suspend" not in job["spec"]
    assert "clusterSelector" not in job["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["entrypoint"] == "loka-trainer run"


def test_unqueued_rayjob_carries_spec_suspend() -> None:
    job = rayjob(make_spec(queue=None, suspend=True))
    assert job["spec"]["suspend"] is True
    assert naming.KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]


def test_worker_group_gets_gpus_and_placement_from_resources() -> None:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    group = cluster["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    worker = group["template"]["spec"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert head["serviceAccountName"] == naming.service_account_name("qwen")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_every_pod_runs_restricted_without_a_fixed_uid() -> None:
    job = rayjob()
    for container in containers(job):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsNonRoot"] is True
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "runAsUser" not in ctx
        assert not ctx.get("privileged", False)
    assert "runAsUser" not in json.dumps(job)


def test_trainer_env_contract_with_secrets_only_by_reference() -> None:
    head = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env["LOKA_RUN_NAME"]["value"] == "qwen"
    assert env["LOKA_RUN_NAMESPACE"]["value"] == "team-a"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "loka-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "loka-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "loka-secrets", "key": "wandb-api-key"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "loka-secrets", "key": "hf-token"}}
    for secret_env in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "HF_TOKEN"):
        assert "value" not in env[secret_env]


def test_runtime_env_carries_only_the_plain_variables() -> None:
    runtime_env = yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])
    assert runtime_env == {
        "env_vars": {
            "LOKA_RUN_NAME": "qwen",
            "LOKA_RUN_NAMESPACE": "team-a",
            "AWS_ENDPOINT_URL": "http://minio.minio:9000",
            "RAY_JOB_STOP_WAIT_TIME_S": "55",  # the default grace period (60 s) less the kubelet's part
        }
    }


def test_a_preemption_gives_the_pods_the_grace_period_to_save_in_and_stops_the_job_before_their_sigterm() -> None:
    job = build_rayjob(
        make_spec(preemption={"gracePeriodSeconds": 300}), run="qwen", namespace="team-a", uid=UID,
        settings=RayJobSettings(),
    )  # fmt: skip
    pods = pod_specs(job)
    assert {kind: pod["terminationGracePeriodSeconds"] for kind, pod in pods.items()} == {"head": 300, "worker": 300}
    # KubeRay deletes the pods at once on eviction: the head's preStop stops the Ray job through Ray (the trainer
    # gets SIGTERM, saves, exits), the workers' waits for that, all before the kubelet's own SIGTERM.
    hooks = {kind: pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] for kind, pod in pods.items()}
    assert hooks == {"head": ["loka-trainer", "release"], "worker": ["loka-trainer", "release", "--wait"]}
    # Ray's job supervisor gives the trainer all but the kubelet's last 5 s before its SIGKILL.
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "295"


def pod_specs(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"]["spec"],
        "worker": cluster["workerGroupSpecs"][0]["template"]["spec"],
    }


def work_volume_of(pod: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The volume mounted at the trainer's work dir, its mount path, and $LOKA_WORK_DIR."""
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["LOKA_WORK_DIR"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, mount["mountPath"], env["LOKA_WORK_DIR"]


def test_every_ray_pod_works_on_a_volume_sized_from_the_spec_not_on_the_containers_writable_layer() -> None:
    resources = make_spec().resources.model_dump(by_alias=True)
    resources["head"]["disk"] = "300Gi"
    defaults = RayJobSettings(head_disk="200Gi", worker_disk="1Ti")
    job = build_rayjob(make_spec(resources=resources), run="qwen", namespace="team-a", uid=UID, settings=defaults)
    pods = pod_specs(job)
    head, path, work_dir = work_volume_of(pods["head"])
    assert head == {"name": "work", "emptyDir": {"sizeLimit": "300Gi"}}  # the spec's size
    assert path == work_dir == "/var/lib/loka"
    worker, _, _ = work_volume_of(pods["worker"])
    assert worker == {"name": "work", "emptyDir": {"sizeLimit": "1Ti"}}  # the operator's default
    assert "LOKA_WORK_DIR" not in job["spec"]["runtimeEnvYAML"]  # a pod path, never a local Ray's


def test_a_storage_class_gives_each_ray_pod_its_own_ephemeral_volume() -> None:
    resources = make_spec().resources.model_dump(by_alias=True)
    resources["diskStorageClass"] = "fast-nvme"
    job = build_rayjob(
        make_spec(resources=resources),
        run="qwen",
        namespace="team-a",
        uid=UID,
        settings=RayJobSettings(worker_disk="800Gi", disk_storage_class="standard"),
    )
    worker, _, _ = work_volume_of(pod_specs(job)["worker"])
    claim = worker["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-nvme",  # the spec's class wins over the operator's
        "resources": {"requests": {"storage": "800Gi"}},
    }


@pytest.mark.parametrize(("mode", "has_submitter"), [("K8sJobMode", True), ("HTTPMode", False)])
def test_submission_mode_is_an_operator_setting(mode: str, has_submitter: bool) -> None:
    job = rayjob(mode=mode)
    assert job["spec"]["submissionMode"] == mode
    assert ("submitterPodTemplate" in job["spec"]) is has_submitter


def test_role_allows_exactly_get_run_and_patch_its_status() -> None:
    role = build_role("qwen", "team-a", UID)
    assert role["rules"] == [
        {"apiGroups": ["loka.dev"], "resources": ["trainingruns"], "resourceNames": ["qwen"], "verbs": ["get"]},
        {
            "apiGroups": ["loka.dev"],
            "resources": ["trainingruns/status"],
            "resourceNames": ["qwen"],
            "verbs": ["patch"],
        },
    ]
    binding = build_role_binding("qwen", "team-a", UID)
    account = build_service_account("qwen", "team-a", UID)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "team-a"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for obj in (role, binding, account):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID


def test_local_queue_only_when_the_run_names_a_cluster_queue() -> None:
    queue = build_local_queue(QueueSpec(name="team-a", cluster_queue="gpu-cq"), "ns")
    assert queue is not None
    assert queue["spec"] == {"clusterQueue": "gpu-cq"}
    assert "ownerReferences" not in queue["metadata"]  # shared by the namespace's runs
    assert build_local_queue(QueueSpec(name="team-a"), "ns") is None


# ------------------------------------------------------------------------------- a run's reach


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_each_secret_goes_only_to_the_pods_whose_processes_use_it() -> None:
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    s3 = {"AWS_ACCESS_KEY_ID": ("loka-s3", "AWS_ACCESS_KEY_ID"),
          "AWS_SECRET_ACCESS_KEY": ("loka-s3", "AWS_SECRET_ACCESS_KEY")}  # fmt: skip
    hf = {"HF_TOKEN": ("loka-secrets", "hf-token")}
    assert secret_refs(head) == {**s3, "WANDB_API_KEY": ("loka-secrets", "wandb-api-key"), **hf}
    assert secret_refs(worker) == {**s3, **hf}  # verl's tracker (TaskRunner) is pinned to the head
    assert secret_refs(submitter) == {}
    assert "env" not in submitter


def test_no_pod_gets_an_api_token_but_the_heads_trainer_container_for_ten_minutes() -> None:
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    pods = [head, cluster["workerGroupSpecs"][0]["template"]["spec"], job["spec"]["submitterPodTemplate"]["spec"]]
    assert [pod.get("automountServiceAccountToken") for pod in pods] == [False, False, False]
    (token_volume,) = [v for v in head["volumes"] if "projected" in v]
    sources = token_volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
    assert {"path": "ca.crt", "key": "ca.crt"} in sources[1]["configMap"]["items"]
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == token_volume["name"]]
    assert mount == {"name": token_volume["name"], "mountPath": contract.SERVICE_ACCOUNT_DIR, "readOnly": True}
    for pod in pods[1:]:
        assert not [v for v in pod.get("volumes", []) if "projected" in v]
    account = build_service_account("qwen", "team-a", UID)
    assert account["automountServiceAccountToken"] is False


def test_rayjob_turns_on_rays_token_auth_with_the_runs_own_secret() -> None:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "loka-run-qwen-ray-token"}
    assert tuple(int(p) for p in cluster["rayVersion"].split(".")) >= (2, 52, 0)  # KubeRay's minimum for token auth


def test_ray_token_secret_belongs_to_the_runs_rayjob_and_is_immutable_and_random() -> None:
    first, second = (build_ray_auth_secret("qwen", "team-a", "qwen", "rayjob-uid", new_ray_token()) for _ in range(2))
    assert first["metadata"]["name"] == "loka-run-qwen-ray-token"
    # KubeRay's RayJob finalizer reads the token: it goes after the RayJob, by garbage collection.
    assert first["metadata"]["ownerReferences"] == [
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "qwen", "uid": "rayjob-uid", "controller": True}
    ]
    assert first["immutable"] is True
    token = base64.b64decode(first["data"]["auth_token"])
    assert len(token) >= 40
    assert first["data"] != second["data"]


def test_network_policy_selects_every_pod_of_the_run_and_names_kuberays_namespace() -> None:
    policy = build_network_policy("qwen", "team-a", UID, kuberay_namespace="ray-system")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {naming.LABEL_RUN: "qwen"}}
    assert spec["policyTypes"] == ["Ingress"]
    own, kuberay = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {naming.LABEL_RUN: "qwen"}}}]}
    assert kuberay["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}}]
    assert kuberay["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_an_environments_secret_variables_and_prompt_reach_every_ray_pod_by_reference() -> None:
    environment = {
        "servers": [{"name": "env", "url": "http://env.envs.svc/mcp", "headers": {"Authorization": "Bearer ${KEY}"}}],
        "secretVariables": [{"name": "KEY", "secretRef": {"secret": "env-key", "key": "token"}}],
        "systemPrompt": {"configMap": {"name": "env-prompt", "key": "system.txt"}},
    }
    job = rayjob(make_spec(environment=environment))
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    for container in (head, worker):
        assert secret_refs(container)["KEY"] == ("env-key", "token")
        env = {e["name"]: e for e in container["env"]}
        assert env["LOKA_SYSTEM_PROMPT"]["valueFrom"] == {
            "configMapKeyRef": {"name": "env-prompt", "key": "system.txt"}
        }
        assert env["LOKA_SECRET_VARIABLES"]["value"] == "KEY"  # names only, for the trainer's redaction
    assert "KEY" not in secret_refs(submitter)


def test_a_judge_components_key_and_rubric_reach_the_ray_pods_by_reference_only() -> None:
    judge = {
        "endpoint": "http://vllm-judge.models:8000/v1",
        "model": "qwen3-32b",
        "apiKey": {"secret": "judge-keys", "key": "strict"},
        "rubric": {"configMap": {"name": "rubrics", "key": "strict.md"}},
    }
    reward = {"components": [{"name": "strict", "kind": "judge", "judge": judge}]}
    job = rayjob(make_spec(reward=reward))
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    for container in (head, worker):  # verl's reward workers run on any node
        assert secret_refs(container)["LOKA_REWARD_API_KEY_STRICT"] == ("judge-keys", "strict")
        env = {e["name"]: e for e in container["env"]}
        assert env["LOKA_REWARD_RUBRIC_STRICT"]["valueFrom"] == {
            "configMapKeyRef": {"name": "rubrics", "key": "strict.md"}
        }
    assert "LOKA_REWARD_API_KEY_STRICT" not in secret_refs(submitter)
