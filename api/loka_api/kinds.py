"""Every Kubernetes kind Loka reads or writes, by group, version and plural: the one place each is spelled.

The operator's child registry, the client library, the CLI, the demo and the benchmarks name kinds through these
constants; none of them writes an API group or version again.
"""

from __future__ import annotations

from dataclasses import dataclass

from loka_api.cycle import REWARD_CYCLE_KIND, REWARD_CYCLE_PLURAL
from loka_api.evaluation import EVALUATION_KIND, EVALUATION_PLURAL
from loka_api.models import GROUP, KIND, PLURAL, VERSION


@dataclass(frozen=True)
class Kind:
    """A Kubernetes resource type: where it is served (group, version, plural) and what its objects say (kind)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        """``apiVersion`` of its objects: ``group/version``, or ``version`` alone for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvr(self) -> tuple[str, str, str]:
        """``(group, version, plural)``, the form kopf's handlers and the dynamic clients take."""
        return (self.group, self.version, self.plural)

    def owns(self, api_version: str, kind: str) -> bool:
        """Whether an ownerReference's ``apiVersion``/``kind`` names this kind (any version of its group)."""
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        return kind == self.kind and group == self.group

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The API server path of the collection, one object, or its subresource."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


# Loka's own.
TRAINING_RUN = Kind(GROUP, VERSION, PLURAL, KIND)
EVALUATION = Kind(GROUP, VERSION, EVALUATION_PLURAL, EVALUATION_KIND)
REWARD_CYCLE = Kind(GROUP, VERSION, REWARD_CYCLE_PLURAL, REWARD_CYCLE_KIND)

# KubeRay.
RAY_JOB = Kind("ray.io", "v1", "rayjobs", "RayJob")
RAY_CLUSTER = Kind("ray.io", "v1", "rayclusters", "RayCluster")

# Kueue.
WORKLOAD = Kind("kueue.x-k8s.io", "v1beta2", "workloads", "Workload")
LOCAL_QUEUE = Kind("kueue.x-k8s.io", "v1beta2", "localqueues", "LocalQueue")
CLUSTER_QUEUE = Kind("kueue.x-k8s.io", "v1beta2", "clusterqueues", "ClusterQueue", namespaced=False)
RESOURCE_FLAVOR = Kind("kueue.x-k8s.io", "v1beta2", "resourceflavors", "ResourceFlavor", namespaced=False)
WORKLOAD_PRIORITY_CLASS = Kind(
    "kueue.x-k8s.io", "v1beta2", "workloadpriorityclasses", "WorkloadPriorityClass", namespaced=False
)

# Kubernetes.
SECRET = Kind("", "v1", "secrets", "Secret")
CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
SERVICE = Kind("", "v1", "services", "Service")
POD = Kind("", "v1", "pods", "Pod")
EVENT = Kind("", "v1", "events", "Event")
NAMESPACE = Kind("", "v1", "namespaces", "Namespace", namespaced=False)
ROLE = Kind("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
JOB = Kind("batch", "v1", "jobs", "Job")
