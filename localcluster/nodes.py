"""The fake nodes KWOK manages: a GPU pool a user would select on, and a CPU pool."""

from __future__ import annotations

import json
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_NODES = 4
CPU_NODES = 2
GPUS_PER_NODE = 8
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def _node(name: str, *, labels: dict[str, str], capacity: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/worker": "",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def manifests() -> list[dict[str, Any]]:
    gpu = [
        _node(
            f"gpu-node-{i}",
            labels={
                "loka.dev/pool": "gpu",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "node.kubernetes.io/instance-type": "gpu-8x-h100",
                "topology.kubernetes.io/zone": f"local-{i % 2}",
            },
            capacity={
                "cpu": "96",
                "memory": "1Ti",
                "nvidia.com/gpu": str(GPUS_PER_NODE),
                "pods": "110",
                "ephemeral-storage": "2Ti",
            },
        )
        for i in range(GPU_NODES)
    ]
    cpu = [
        _node(
            f"cpu-node-{i}",
            labels={
                "loka.dev/pool": "cpu",
                "node.kubernetes.io/instance-type": "cpu-32",
                "topology.kubernetes.io/zone": f"local-{i % 2}",
            },
            capacity={"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"},
        )
        for i in range(CPU_NODES)
    ]
    return gpu + cpu


def all_schedulable(nodes_json: str, names: list[str]) -> bool:
    """Every named node is Ready and carries no NoSchedule/NoExecute taint (e.g. not-ready)."""
    items = {n["metadata"]["name"]: n for n in json.loads(nodes_json).get("items", [])}
    for name in names:
        node = items.get(name)
        if node is None:
            return False
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", [])
        )
        blocking = [t for t in node.get("spec", {}).get("taints", []) if t.get("effect") in ("NoSchedule", "NoExecute")]
        if not ready or blocking:
            return False
    return True
