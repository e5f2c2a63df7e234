"""Which node restores which checkpoint shards: the same rank order verl gives its workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from loka_trainer.nodes import gpu_rank_layout


def node(node_id: str, ip: str, gpus: int) -> dict[str, Any]:
    resources = {"CPU": 32.0, **({"GPU": float(gpus)} if gpus else {})}
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": True, "Resources": resources}


# A head without GPUs and three 8-GPU workers, whose IPs do not sort like their names.
NODES = [
    node("head", "10.0.0.5", 0),
    node("w-a", "10.0.0.12", 8),
    node("w-b", "10.0.0.9", 8),
    node("w-c", "10.0.1.2", 8),
]


def test_ranks_follow_verls_placement_group_order_by_node_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from verl.single_controller.ray.base import sort_placement_group_by_node_ip

    @dataclass(frozen=True)
    class PlacementGroup:  # one per GPU node, as verl's RayResourcePool makes them
        id: str

    monkeypatch.setattr(ray, "nodes", lambda: NODES)
    table = {f"pg-{n['NodeID']}": {"bundles_to_node_id": {0: n["NodeID"]}} for n in NODES if n["Resources"].get("GPU")}
    monkeypatch.setattr(ray._private.state.state, "placement_group_table", lambda pg_id: table[pg_id])
    groups: list[Any] = [PlacementGroup(pg) for pg in table]
    verl_order: list[Any] = sort_placement_group_by_node_ip(groups)
    # verl numbers ranks pg by pg in that order, 8 per node (RayWorkerGroup._init_with_resource_pool).
    verl_ranks = {pg.id.removeprefix("pg-"): frozenset(range(i * 8, i * 8 + 8)) for i, pg in enumerate(verl_order)}

    layout = gpu_rank_layout(NODES, nnodes=3, gpus_per_node=8)

    assert layout == {"head": frozenset(), **verl_ranks}
    assert layout["w-a"] == frozenset(range(8))  # "10.0.0.12" < "10.0.0.9": verl compares IPs as strings


def test_without_a_unique_order_every_node_restores_every_shard() -> None:
    same_ip = [node("a", "127.0.0.1", 8), node("b", "127.0.0.1", 8)]
    assert gpu_rank_layout(same_ip, nnodes=2, gpus_per_node=8) is None
    assert gpu_rank_layout(NODES, nnodes=2, gpus_per_node=8) is None  # a GPU node verl was not told about
