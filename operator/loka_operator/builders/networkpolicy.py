"""The run's NetworkPolicy: its Ray pods accept traffic only from the run's own pods, and the Ray dashboard
from the KubeRay operator's namespace (KubeRay submits and polls the job there, in HTTPMode).

Ray opens more ports than KubeRay's Service names (GCS 6379, client 10001, dashboard 8265, metrics 8080,
serve 8000, the dashboard agent 52365, and random node manager, object manager and runtime-env agent
ports, workers in 10002-19999). The rule for the run's own pods lists no port, so Ray's random ports keep
working between its nodes; every port is closed to every other peer. Kubelet probes and `kubectl
port-forward` come from the node, which a NetworkPolicy never blocks.
"""

from __future__ import annotations

from typing import Any

from loka_operator import naming
from loka_operator.children import NETWORK_POLICY

Manifest = dict[str, Any]

# KubeRay's dashboard port (DefaultDashboardPort); the RayJob leaves it at the default.
RAY_DASHBOARD_PORT = 8265
# Where KubeRay's own install (config/default, and the Helm chart's quick start) puts the operator.
KUBERAY_DEFAULT_NAMESPACE = "default"


def build_network_policy(run: str, namespace: str, uid: str, *, kuberay_namespace: str) -> Manifest:
    run_pods = naming.run_pods_selector(run)
    kuberay = {"namespaceSelector": {"matchLabels": {naming.NAMESPACE_NAME_LABEL: kuberay_namespace}}}
    return {
        **NETWORK_POLICY.manifest(naming.network_policy_name(run), run=run, namespace=namespace, uid=uid),
        "spec": {
            "podSelector": run_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": run_pods}]},
                {"from": [kuberay], "ports": [{"protocol": "TCP", "port": RAY_DASHBOARD_PORT}]},
            ],
        },
    }
