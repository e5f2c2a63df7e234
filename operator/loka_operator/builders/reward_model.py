"""The reward models the operator serves for a run (``spec.reward.components[].rewardModel.fromRun``): a Deployment
and a Service each.

They are side services (`children.py`), like the environment servers: owned by the run, so they go with it; their
pods carry the run's labels, so the run's NetworkPolicy selects them and admits only the run's own pods; the
trainer's component reaches each at its Service's cluster address (`loka_api.reward_models.served_url`). Kueue
counts them with the run through a suspended worker group of the server's pod shape in the RayJob, and a
Deployment has its replicas only while the run holds that quota (`environment.serving`).

A server exists once status.rewardModels records the checkpoint its component resolved to (the run waits for it
before anything launches, as for spec.model.fromRun). Its pod:

- an init container ``stage`` (the run's image) restores that checkpoint, verified against its manifest, into an
  emptyDir (``python -m loka_trainer.rm_server --stage-only``); it alone gets the run's S3 credentials
  (`secret_routes`: the reward-model route);
- the container ``server`` serves it on port 8000: on CPU the plain server ``python -m loka_trainer.rm_server``
  (tiny models); with ``serving.gpus``, vLLM's pooling runner (``vllm serve <dir> --runner pooling``, which the
  run's image carries, or ``serving.image``). Both answer ``POST /classify`` and ``GET /health``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loka_api import RewardModelServing, TrainingRun, TrainingRunSpec, contract, secret_routes
from loka_api.models import RewardComponent
from loka_api.reward_models import (
    SERVED_MODEL_DIR,
    SERVED_PORT,
    served_components,
    service_name,
    serving_of,
)
from loka_operator import naming
from loka_operator.builders.environment import serving
from loka_operator.builders.security import restricted_container_security, restricted_pod_security
from loka_operator.children import REWARD_MODEL_SERVER, REWARD_MODEL_SERVICE

if TYPE_CHECKING:
    from loka_operator.config import OperatorConfig

Manifest = dict[str, Any]
SERVER_CONTAINER = "server"
STAGE_CONTAINER = "stage"
PORT_NAME = "http"
MODELS_VOLUME = "models"
SCRATCH_VOLUME = "scratch"  # HOME and caches: the image's own directories may not be writable (restricted)
SCRATCH_DIR = "/tmp"
GPU_RESOURCE = "nvidia.com/gpu"


def served(run: TrainingRun) -> list[tuple[RewardComponent, str]]:
    """The run's served reward models with the checkpoint status.rewardModels records for each (none yet: absent)."""
    recorded = {r.component: r.uri for r in run.status.reward_models if r.uri}
    return [(c, recorded[c.name]) for c in served_components(run.spec) if c.name in recorded]


def _resources(shape: RewardModelServing) -> Manifest:
    amounts: dict[str, Any] = {"cpu": shape.cpu, "memory": shape.memory}
    if shape.gpus > 0:
        amounts[GPU_RESOURCE] = str(shape.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _serve_command(component: RewardComponent, shape: RewardModelServing) -> list[str]:
    model = component.reward_model.model if component.reward_model is not None else "rm"
    if shape.gpus > 0:
        return [
            "vllm",
            "serve",
            SERVED_MODEL_DIR,
            "--runner",
            "pooling",
            "--served-model-name",
            model,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVED_PORT),
            "--tensor-parallel-size",
            str(shape.gpus),
        ]
    return ["python", "-m", "loka_trainer.rm_server", "--model", SERVED_MODEL_DIR, "--name", model]


def _stage_env(spec: TrainingRunSpec) -> list[Manifest]:
    env: list[Manifest] = [{"name": "HOME", "value": SCRATCH_DIR}]
    if spec.storage is not None and spec.storage.endpoint is not None:
        env.append({"name": contract.ENV_AWS_ENDPOINT, "value": spec.storage.endpoint})
    return env + secret_routes.env_for(secret_routes.of_run(spec), secret_routes.Holder.REWARD_MODEL_STAGER)


def server_pod_template(run: str, spec: TrainingRunSpec, component: RewardComponent, checkpoint: str) -> Manifest:
    """One server pod: the checkpoint staged by the init container, then served on its port; no API token, the
    restricted profile."""
    shape = serving_of(component)
    mounts = [
        {"name": MODELS_VOLUME, "mountPath": SERVED_MODEL_DIR.rsplit("/", 1)[0]},
        {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
    ]
    stage = {
        "name": STAGE_CONTAINER,
        "image": spec.image,
        "command": ["python", "-m", "loka_trainer.rm_server", "--model", checkpoint, "--stage-only", SERVED_MODEL_DIR],
        "env": _stage_env(spec),
        "resources": _resources(shape.model_copy(update={"gpus": 0})),
        "securityContext": restricted_container_security(),
        "volumeMounts": [dict(m) for m in mounts],
    }
    server: Manifest = {
        "name": SERVER_CONTAINER,
        "image": shape.image or spec.image,
        "command": _serve_command(component, shape),
        "env": [{"name": "HOME", "value": SCRATCH_DIR}],
        "ports": [{"name": PORT_NAME, "containerPort": SERVED_PORT, "protocol": "TCP"}],
        "resources": _resources(shape),
        # Ready once it answers: the Service sends requests only to pods whose model is loaded.
        "readinessProbe": {"httpGet": {"path": "/health", "port": SERVED_PORT}, "periodSeconds": 5},
        "securityContext": restricted_container_security(),
        "volumeMounts": [dict(m) for m in mounts],
    }
    pod_spec: Manifest = {
        # A reward model has no business with the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "initContainers": [stage],
        "containers": [server],
        "volumes": [{"name": MODELS_VOLUME, "emptyDir": {}}, {"name": SCRATCH_VOLUME, "emptyDir": {}}],
    }
    if shape.gpus > 0:
        # On the run's GPU nodes, as its Ray workers are.
        if spec.resources.node_selector:
            pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
        if spec.resources.tolerations:
            pod_spec["tolerations"] = [
                t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations
            ]
    return {"metadata": {"labels": naming.reward_model_pod_labels(run, component.name)}, "spec": pod_spec}


def reward_model_quota_groups(run: TrainingRun) -> list[Manifest]:
    """The RayJob's worker groups that hold the served reward models' quota in the run's Kueue Workload (suspended:
    KubeRay starts no pod for them)."""
    groups = []
    for component, checkpoint in served(run):
        replicas = serving_of(component).replicas
        groups.append(
            {
                "groupName": naming.reward_model_quota_group(component.name),
                "replicas": replicas,
                "minReplicas": replicas,
                "maxReplicas": replicas,
                "suspend": True,
                "rayStartParams": {},
                "template": server_pod_template(run.metadata.name, run.spec, component, checkpoint),
            }
        )
    return groups


def build_reward_model_deployments(run: TrainingRun, _config: OperatorConfig) -> list[Manifest]:
    """A Deployment per served reward model: its replicas while the run holds their quota, none otherwise."""
    meta, replicas_now = run.metadata, serving(run)
    deployments = []
    for component, checkpoint in served(run):
        template = server_pod_template(meta.name, run.spec, component, checkpoint)
        name = service_name(meta.name, component.name)
        manifest = REWARD_MODEL_SERVER.manifest(name, run=meta.name, namespace=meta.namespace, uid=meta.uid)
        manifest["metadata"]["labels"][naming.LABEL_REWARD_MODEL] = template["metadata"]["labels"][
            naming.LABEL_REWARD_MODEL
        ]
        manifest["spec"] = {
            "replicas": serving_of(component).replicas if replicas_now else 0,
            "selector": {"matchLabels": template["metadata"]["labels"]},
            "template": template,
        }
        deployments.append(manifest)
    return deployments


def build_reward_model_services(run: TrainingRun, _config: OperatorConfig) -> list[Manifest]:
    """A Service per served reward model, at the address the trainer's component is given
    (``<run>-rm-<component>.<namespace>.svc:8000``)."""
    meta = run.metadata
    services = []
    for component, _checkpoint in served(run):
        labels = naming.reward_model_pod_labels(meta.name, component.name)
        name = service_name(meta.name, component.name)
        manifest = REWARD_MODEL_SERVICE.manifest(name, run=meta.name, namespace=meta.namespace, uid=meta.uid)
        manifest["metadata"]["labels"][naming.LABEL_REWARD_MODEL] = labels[naming.LABEL_REWARD_MODEL]
        manifest["spec"] = {
            "selector": labels,
            "ports": [{"name": PORT_NAME, "port": SERVED_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        }
        services.append(manifest)
    return services
