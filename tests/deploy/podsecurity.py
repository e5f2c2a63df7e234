"""A restricted-v2 check for pod specs: what OpenShift's restricted-v2 SCC and the Kubernetes
`restricted` Pod Security Standard both demand, plus "no fixed UID or fsGroup" so the SCC can assign them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Manifest = dict[str, Any]

ALLOWED_VOLUMES = frozenset(
    {"configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected", "secret", "csi", "ephemeral"}
)
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC", "hostUsers")


def restricted_violations(pod_spec: Manifest, where: str = "pod") -> list[str]:
    """Every way this pod spec would be refused by restricted-v2, as 'path: problem' lines."""
    problems: list[str] = []
    pod_sc: Manifest = pod_spec.get("securityContext") or {}
    for key in HOST_NAMESPACES:
        if key == "hostUsers":
            continue
        if pod_spec.get(key):
            problems.append(f"{where}.{key}: must not be true")
    for key in ("runAsUser", "fsGroup", "runAsGroup"):
        if key in pod_sc:
            problems.append(f"{where}.securityContext.{key}: fixed to {pod_sc[key]!r}; leave it to the SCC")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{where}.volumes[{volume.get('name')}]: {sorted(kinds)} not allowed")
    containers = _containers(pod_spec)
    if not containers:
        problems.append(f"{where}: has no containers")
    for kind, container in containers:
        path = f"{where}.{kind}[{container.get('name')}]"
        sc: Manifest = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{path}.securityContext.privileged: must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{path}.securityContext.allowPrivilegeEscalation: must be false")
        caps: Manifest = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{path}.securityContext.capabilities.drop: must contain ALL")
        added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
        if added:
            problems.append(f"{path}.securityContext.capabilities.add: {sorted(added)} not allowed")
        for key in ("runAsUser", "runAsGroup"):
            if key in sc:
                problems.append(f"{path}.securityContext.{key}: fixed to {sc[key]!r}; leave it to the SCC")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{path}: runAsNonRoot must be true (pod or container)")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{path}: seccompProfile.type is {seccomp!r}, must be RuntimeDefault (pod or container)")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{path}.ports[{port.get('name')}]: hostPort not allowed")
    return problems


def _containers(pod_spec: Manifest) -> list[tuple[str, Manifest]]:
    return [
        (kind, container)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for container in pod_spec.get(kind) or []
    ]


def pod_specs(manifest: Manifest) -> Iterator[tuple[str, Manifest]]:
    """The pod specs inside a workload or RayJob manifest, with a readable path for each."""
    kind = manifest.get("kind")
    name = f"{kind}/{manifest.get('metadata', {}).get('name')}"
    spec: Manifest = manifest.get("spec") or {}
    if kind == "Pod":
        yield name, spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield f"{name}.spec.template", spec["template"]["spec"]
    elif kind == "CronJob":
        yield f"{name}.jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in {"RayJob", "RayCluster"}:
        cluster: Manifest = spec.get("rayClusterSpec", spec) if kind == "RayJob" else spec
        yield f"{name}.headGroupSpec", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"{name}.workerGroupSpecs[{group.get('groupName')}]", group["template"]["spec"]
        if kind == "RayJob" and "submitterPodTemplate" in spec:
            yield f"{name}.submitterPodTemplate", spec["submitterPodTemplate"]["spec"]
