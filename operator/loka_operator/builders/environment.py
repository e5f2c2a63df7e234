"""The MCP environment servers a run brings (``spec.environment.servers[].run``): a Deployment and a Service each.

They are side services (`children.py`): owned by the run, so they go with it; their pods carry the run's labels, so
the run's NetworkPolicy selects them and admits only the run's own pods; the trainer reaches each at its Service's
cluster address (`loka_api.environments.server_url`).

Kueue counts them with the run: the RayJob carries, per server, a worker group of the server's pod shape and replica
count that is suspended (KubeRay starts no pod for it), so the run's Workload holds the servers' quota beside the
Ray pods', and Kueue admits, queues and preempts them together. The Deployment serves only while that quota is
held: it has its replicas once the run is admitted (at once for a run without a queue), none while the run waits,
is suspended or has finished.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loka_api import ConditionType, TrainingRun, TrainingRunSpec
from loka_api.environments import EnvironmentServer, ServerImage, service_name
from loka_api.phases import TERMINAL
from loka_operator import naming
from loka_operator.builders.security import restricted_container_security, restricted_pod_security
from loka_operator.children import ENVIRONMENT_SERVER, ENVIRONMENT_SERVICE

if TYPE_CHECKING:
    from loka_operator.config import OperatorConfig

Manifest = dict[str, Any]
SERVER_CONTAINER = "server"
PORT_NAME = "mcp"


def image_servers(spec: TrainingRunSpec) -> list[tuple[EnvironmentServer, ServerImage]]:
    """The run's servers given as an image (the others are hosted elsewhere, at their URL)."""
    environment = spec.environment
    if environment is None:
        return []
    return [(server, server.run) for server in environment.servers if server.run is not None]


def serving(run: TrainingRun) -> bool:
    """Whether the run's environment servers should run now: while Kueue holds their quota (the run is admitted, or
    has no queue), it is not suspended, and it has not finished."""
    spec, status = run.spec, run.status
    if spec.suspend or status.phase in TERMINAL:
        return False
    if spec.queue is None:
        return True
    return any(c.type == ConditionType.ADMITTED and c.status == "True" for c in status.conditions)


def server_pod_template(run: str, server: EnvironmentServer, image: ServerImage) -> Manifest:
    """One server pod: the image on its port, its requests and limits, no API token, the restricted profile."""
    amounts = {"cpu": image.resources.cpu, "memory": image.resources.memory}
    container: Manifest = {
        "name": SERVER_CONTAINER,
        "image": image.image,
        "ports": [{"name": PORT_NAME, "containerPort": image.port, "protocol": "TCP"}],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        # Ready once it accepts connections: the Service sends sessions only to pods that listen.
        "readinessProbe": {"tcpSocket": {"port": image.port}, "periodSeconds": 5},
        "securityContext": restricted_container_security(),
    }
    if image.args:
        container["args"] = list(image.args)
    return {
        "metadata": {"labels": naming.environment_pod_labels(run, server.name)},
        "spec": {
            # An environment has no business with the Kubernetes API.
            "automountServiceAccountToken": False,
            "securityContext": restricted_pod_security(),
            "containers": [container],
        },
    }


def environment_quota_groups(spec: TrainingRunSpec, run: str) -> list[Manifest]:
    """The RayJob's worker groups that hold the servers' quota in the run's Kueue Workload (suspended: no pods)."""
    groups = []
    for server, image in image_servers(spec):
        groups.append(
            {
                "groupName": naming.environment_quota_group(server.name),
                "replicas": image.replicas,
                "minReplicas": image.replicas,
                "maxReplicas": image.replicas,
                "suspend": True,
                "rayStartParams": {},
                "template": server_pod_template(run, server, image),
            }
        )
    return groups


def build_environment_deployments(run: TrainingRun, _config: OperatorConfig) -> list[Manifest]:
    """A Deployment per image server: its replicas while the run holds their quota, none otherwise."""
    meta, replicas_now = run.metadata, serving(run)
    deployments = []
    for server, image in image_servers(run.spec):
        name = service_name(meta.name, server.name)
        template = server_pod_template(meta.name, server, image)
        manifest = ENVIRONMENT_SERVER.manifest(name, run=meta.name, namespace=meta.namespace, uid=meta.uid)
        manifest["metadata"]["labels"][naming.LABEL_ENV_SERVER] = server.name
        manifest["spec"] = {
            "replicas": image.replicas if replicas_now else 0,
            "selector": {"matchLabels": template["metadata"]["labels"]},
            "template": template,
        }
        deployments.append(manifest)
    return deployments


def build_environment_services(run: TrainingRun, _config: OperatorConfig) -> list[Manifest]:
    """A Service per image server, at the address the trainer is given (``<run>-env-<server>.<namespace>.svc``)."""
    meta = run.metadata
    services = []
    for server, image in image_servers(run.spec):
        name = service_name(meta.name, server.name)
        manifest = ENVIRONMENT_SERVICE.manifest(name, run=meta.name, namespace=meta.namespace, uid=meta.uid)
        manifest["metadata"]["labels"][naming.LABEL_ENV_SERVER] = server.name
        manifest["spec"] = {
            "selector": naming.environment_pod_labels(meta.name, server.name),
            "ports": [{"name": PORT_NAME, "port": image.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        }
        services.append(manifest)
    return services
