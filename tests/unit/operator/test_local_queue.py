"""A namespace's LocalQueue is created once, however many of its runs launch together."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from loka_api import QueueSpec, kinds
from loka_api.kinds import Kind
from loka_operator.config import OperatorConfig
from loka_operator.kube import KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.reconcile import Reconciler


class CountingApi:
    """Creates that take a round trip (the other workers run meanwhile), counted by kind."""

    def __init__(self) -> None:
        self.creates: list[Kind] = []

    async def create(self, kind: Kind, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        self.creates.append(kind)
        await asyncio.sleep(0.01)
        return manifest


def test_a_burst_of_runs_in_one_namespace_creates_its_local_queue_once() -> None:
    async def scenario() -> list[Kind]:
        api = CountingApi()
        runs = Reconciler(client=cast("KubeClient", api), config=OperatorConfig(), metrics=OperatorMetrics())
        queue = QueueSpec.model_validate({"name": "team-a", "clusterQueue": "gpus"})
        # 16 reconciles at once, as the operator's workers take a burst of new runs
        await asyncio.gather(*(runs.ensure_local_queue(queue, "loka") for _ in range(16)))
        await runs.ensure_local_queue(QueueSpec.model_validate({"name": "team-b", "clusterQueue": "gpus"}), "loka")
        return api.creates

    assert asyncio.run(scenario()) == [kinds.LOCAL_QUEUE, kinds.LOCAL_QUEUE], "one create per LocalQueue"
