"""The RayJob that runs a TrainingRun: one head, one GPU worker group, the trainer as entrypoint.

Kueue-compatible (no clusterSelector, shutdownAfterJobFinishes), restricted pod security, Ray's token
authentication on, and secrets only by `secretKeyRef`, each only in the pods whose processes use it
(`loka_api.secret_routes`): no secret value ever appears in a manifest built here. Only the
head's trainer container holds an API token: its run's ServiceAccount token, projected for 10 minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from loka_api import PodResources, TrainingRunSpec, contract, secret_routes
from loka_api.environments import ENV_SYSTEM_PROMPT
from loka_api.models import ConfigMapKeyRef
from loka_operator import naming
from loka_operator.builders.environment import environment_quota_groups
from loka_operator.builders.rayauth import auth_options
from loka_operator.builders.security import restricted_container_security, restricted_pod_security
from loka_operator.children import RAY_JOB

Manifest = dict[str, Any]
# The restricted profile's contexts, under the names the other builders import them by.
_restricted_container_security = restricted_container_security
_restricted_pod_security = restricted_pod_security

SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "SidecarMode")
GPU_RESOURCE = "nvidia.com/gpu"
# The Ray in the trainer image (KubeRay needs it for token auth, 2.52+, and picks its health probes by it).
DEFAULT_RAY_VERSION = "2.60.0"

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
# Before the kubelet's SIGTERM (KubeRay deletes the cluster at once on eviction): the head stops its Ray jobs
# gracefully, so the trainer saves the step in flight; a worker waits until they have ended (loka_trainer.release).
PRESTOP = {contract.RAY_HEAD: ["loka-trainer", "release"], contract.RAY_WORKER: ["loka-trainer", "release", "--wait"]}
TRAINER_TOKEN_VOLUME = "trainer-api-token"
# The shortest lifetime the API server accepts; the kubelet replaces the file at 80% of it. (3607 s, the
# kubelet's own default, is what `--service-account-extend-token-expiration` stretches to a year.)
TRAINER_TOKEN_SECONDS = 600
# Where each Ray container's work volume is mounted; the trainer stages and checkpoints under it ($LOKA_WORK_DIR).
WORK_VOLUME = "work"
WORK_DIR = "/var/lib/loka"


@dataclass(frozen=True)
class RayJobSettings:
    """Operator-wide choices that are not part of a run's spec."""

    submission_mode: str = "K8sJobMode"
    submitter_cpu: str = "500m"
    submitter_memory: str = "512Mi"
    ray_version: str = DEFAULT_RAY_VERSION
    # Work volume sizes when the spec gives none. The head stages the model (a 70B one is about 140 GB in bf16)
    # and the data, but no checkpoint shard; a worker also holds its ranks' shards of the restored checkpoint and
    # of the one being written (for 70B with Adam, about 840 GB over all ranks).
    head_disk: str = "200Gi"
    worker_disk: str = "1Ti"
    disk_storage_class: str | None = None


def plain_env(spec: TrainingRunSpec, run: str, namespace: str) -> dict[str, str]:
    """The trainer's non-secret environment (also given to Ray through runtimeEnvYAML)."""
    env = {contract.ENV_RUN_NAME: run, contract.ENV_RUN_NAMESPACE: namespace}
    if spec.storage is not None and spec.storage.endpoint is not None:
        env[contract.ENV_AWS_ENDPOINT] = spec.storage.endpoint
    if spec.environment is not None and spec.environment.secret_variables:
        # Names only: the trainer redacts these variables' values from everything it prints.
        env[contract.ENV_SECRET_VARIABLES] = ",".join(v.name for v in spec.environment.secret_variables)
    return env


def job_env(spec: TrainingRunSpec, run: str, namespace: str) -> dict[str, str]:
    """The Ray job's environment: the trainer's plain variables, and how long Ray's job supervisor waits between
    its SIGTERM to the trainer and SIGKILL (the pods' grace period, less what the kubelet needs after it).
    """
    wait = contract.ray_job_stop_wait_s(spec.grace_period_seconds)
    return {**plain_env(spec, run, namespace), contract.ENV_RAY_JOB_STOP_WAIT: str(wait)}


def _container_env(spec: TrainingRunSpec, run: str, namespace: str, node: str) -> list[Manifest]:
    """The plain variables, and the secrets a process on this kind of Ray node uses (by reference)."""
    env: list[Manifest] = [{"name": k, "value": v} for k, v in plain_env(spec, run, namespace).items()]
    # The pod's own volume, so not in runtimeEnvYAML: Ray's job env must not point a local Ray at it.
    env.append({"name": contract.ENV_WORK_DIR, "value": WORK_DIR})
    env += secret_routes.env_for(secret_routes.of_run(spec), secret_routes.Holder(node))
    env += [
        {"name": name, "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}}}
        for name, ref in config_map_variables(spec)
    ]
    return env


def config_map_variables(spec: TrainingRunSpec) -> list[tuple[str, ConfigMapKeyRef]]:
    """The trainer's variables read from ConfigMap keys: the environment's system prompt, each judge's rubric."""
    found: list[tuple[str, ConfigMapKeyRef]] = []
    prompt = spec.environment.system_prompt if spec.environment is not None else None
    if prompt is not None:
        found.append((ENV_SYSTEM_PROMPT, prompt.config_map))
    for component in (spec.reward.components if spec.reward is not None else None) or []:
        rubric = component.judge.rubric if component.judge is not None else None
        if rubric is not None and rubric.config_map is not None:
            found.append((contract.reward_rubric_env(component.name), rubric.config_map))
    return found


def _trainer_token_volume() -> Manifest:
    """What the kubelet's own `kube-api-access` volume holds, with a shorter token, for one container only."""
    return {
        "name": TRAINER_TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TRAINER_TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }


def _resources(pod: PodResources, gpus: int) -> Manifest:
    amounts: dict[str, Any] = {"cpu": pod.cpu, "memory": pod.memory}
    if gpus > 0:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def work_volume(size: str, storage_class: str | None) -> Manifest:
    """The pod's work volume: a generic ephemeral volume (a PVC made and deleted with the pod) of ``storage_class``,
    else an emptyDir the kubelet holds to ``size`` (it evicts a pod that writes more, never fills the node).
    """
    if storage_class is None:
        return {"name": WORK_VOLUME, "emptyDir": {"sizeLimit": size}}
    claim = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": storage_class,
        "resources": {"requests": {"storage": size}},
    }
    return {"name": WORK_VOLUME, "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}


def _pod_template(
    spec: TrainingRunSpec,
    *,
    run: str,
    namespace: str,
    container: str,
    node: str,
    pod: PodResources,
    gpus: int,
    service_account: str | None,
    disk: str,
    storage_class: str | None,
) -> Manifest:
    mounts: list[Manifest] = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": WORK_VOLUME, "mountPath": WORK_DIR}]
    # vLLM and NCCL need a large /dev/shm; the container default is 64 MiB.
    volumes: list[Manifest] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, work_volume(disk, storage_class)]
    pod_spec: Manifest = {
        "securityContext": _restricted_pod_security(),
        # No pod-wide token: containers KubeRay adds (a SidecarMode submitter) and worker pods get none.
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": container,
                "image": spec.image,
                "env": _container_env(spec, run, namespace, node),
                "resources": _resources(pod, gpus),
                "securityContext": _restricted_container_security(),
                "volumeMounts": mounts,
                "lifecycle": {"preStop": {"exec": {"command": list(PRESTOP[node])}}},
            }
        ],
        "volumes": volumes,
        # The save on a preemption or a suspension happens within this (spec.preemption.gracePeriodSeconds).
        "terminationGracePeriodSeconds": spec.grace_period_seconds,
    }
    if service_account is not None:
        # The trainer reports status from here: the run's token goes to this container, and only it.
        pod_spec["serviceAccountName"] = service_account
        volumes.append(_trainer_token_volume())
        mounts.append({"name": TRAINER_TOKEN_VOLUME, "mountPath": contract.SERVICE_ACCOUNT_DIR, "readOnly": True})
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations]
    return {"metadata": {"labels": naming.run_labels(run, container)}, "spec": pod_spec}


def _submitter_template(spec: TrainingRunSpec, run: str, settings: RayJobSettings) -> Manifest:
    return {
        "metadata": {"labels": naming.run_labels(run, "submitter")},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": _restricted_pod_security(),
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": spec.image,
                    "resources": _resources(
                        PodResources(cpu=settings.submitter_cpu, memory=settings.submitter_memory), 0
                    ),
                    "securityContext": _restricted_container_security(),
                }
            ],
        },
    }


def build_rayjob(
    spec: TrainingRunSpec,
    *,
    run: str,
    namespace: str,
    uid: str,
    settings: RayJobSettings,
    active_deadline_seconds: int | None = None,
    reward_model_groups: Sequence[Manifest] = (),
) -> Manifest:
    """The RayJob for a run. Under Kueue, `suspend` is Kueue's to flip, so it is only set for unqueued runs.
    ``active_deadline_seconds``: what is left of spec.deadline for the attempt (loka_operator.deadline);
    ``reward_model_groups``: the served reward models' quota groups (`builders.reward_model`, from the run's status)."""
    resources = spec.resources
    storage_class = resources.disk_storage_class or settings.disk_storage_class
    head = _pod_template(
        spec,
        run=run,
        namespace=namespace,
        container=HEAD_CONTAINER,
        node=contract.RAY_HEAD,
        pod=resources.head,
        gpus=0,
        service_account=naming.service_account_name(run),
        disk=resources.head.disk or settings.head_disk,
        storage_class=storage_class,
    )
    worker = _pod_template(
        spec,
        run=run,
        namespace=namespace,
        container=WORKER_CONTAINER,
        node=contract.RAY_WORKER,
        pod=resources.worker,
        gpus=resources.gpus_per_worker,
        service_account=None,
        disk=resources.worker.disk or settings.worker_disk,
        storage_class=storage_class,
    )
    rayjob_spec: Manifest = {
        "entrypoint": contract.TRAINER_ENTRYPOINT,
        "runtimeEnvYAML": yaml.safe_dump({"env_vars": job_env(spec, run, namespace)}, sort_keys=True),
        "submissionMode": settings.submission_mode,
        "shutdownAfterJobFinishes": True,
        "backoffLimit": spec.max_restarts,
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            # Ray refuses dashboard, job and GCS calls without the run's token (KubeRay presents it itself).
            "authOptions": auth_options(run),
            "headGroupSpec": {
                # The head schedules no training work: keep its GPUs (none) and CPUs out of verl's pools.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
                "template": head,
            },
            "workerGroupSpecs": [
                *(
                    [
                        {
                            "groupName": naming.WORKER_GROUP,
                            "replicas": resources.workers,
                            "minReplicas": resources.workers,
                            "maxReplicas": resources.workers,
                            "rayStartParams": {},
                            "template": worker,
                        }
                    ]
                    if resources.workers > 0
                    else []
                ),
                # Under Kueue, the environment servers' quota (suspended groups: their pods are the Deployments').
                *(environment_quota_groups(spec, run) if spec.queue is not None else []),
                *(reward_model_groups if spec.queue is not None else []),
            ],
        },
    }
    if settings.submission_mode == "K8sJobMode":
        rayjob_spec["submitterPodTemplate"] = _submitter_template(spec, run, settings)
    if spec.queue is None:
        rayjob_spec["suspend"] = spec.suspend
    if active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = active_deadline_seconds
    manifest = RAY_JOB.manifest(naming.rayjob_name(run), run=run, namespace=namespace, uid=uid)
    labels = manifest["metadata"]["labels"]
    if spec.queue is not None:
        labels[naming.KUEUE_QUEUE_LABEL] = spec.queue.name
        if spec.queue.priority_class is not None:
            labels[naming.KUEUE_PRIORITY_LABEL] = spec.queue.priority_class
    return {**manifest, "spec": rayjob_spec}
