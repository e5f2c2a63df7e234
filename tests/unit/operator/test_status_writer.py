"""How often the operator writes a run's status: at once for what a reader acts on, words only once they hold.

The apply -> Running sequence below is what KubeRay v1.6 and Kueue v0.19 show a queued run, one watch event at a
time (each a reconcile): every step changes the calculated status, but only four change what anyone acts on.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from loka_api import TrainingRunStatus, kinds
from loka_operator.cache import RunCache
from loka_operator.events import EventRecorder
from loka_operator.kube import JSON, KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.status import Observed, StatusUpdate
from loka_operator.status_writer import SETTLE_SECONDS, StatusWriter

START = datetime(2026, 12, 7, 7, 0, 0, tzinfo=UTC)


class RecordingClient:
    """The API server as far as status writes go: merge patches land on one run and are recorded."""

    def __init__(self, run: JSON) -> None:
        self.run = run
        self.patches: list[JSON] = []

    async def merge_patch(self, kind: Any, namespace: str, name: str, patch: JSON, *, subresource: str = "") -> JSON:
        assert subresource == "status"
        assert patch["metadata"]["resourceVersion"] == self.run["metadata"]["resourceVersion"]
        self.patches.append(patch)
        status = {**(self.run.get("status") or {})}
        for key, value in patch["status"].items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        version = str(int(self.run["metadata"]["resourceVersion"]) + 1)
        self.run = {**self.run, "metadata": {**self.run["metadata"], "resourceVersion": version}, "status": status}
        return copy.deepcopy(self.run)

    async def create(self, kind: Any, namespace: str, body: JSON) -> JSON:
        assert kind == kinds.EVENT
        return body


def a_run() -> JSON:
    return {
        "apiVersion": kinds.TRAINING_RUN.api_version,
        "kind": kinds.TRAINING_RUN.kind,
        "metadata": {"name": "qwen", "namespace": "team-a", "uid": "u1", "resourceVersion": "1", "generation": 1},
        "spec": {
            "image": "ghcr.io/acme/loka:rl-train",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"train": "s3://loka/data/gsm8k/train.parquet"},
            "resources": {"workers": 1, "gpusPerWorker": 8, "head": {"cpu": "1", "memory": "2Gi"}},
            "queue": {"name": "team-a", "clusterQueue": "gpu"},
        },
    }


def rayjob(*, suspend: bool, **status: Any) -> JSON:
    return {"metadata": {"name": "qwen", "uid": "rj1"}, "spec": {"suspend": suspend}, "status": status}


def workload(*conditions: tuple[str, str, str, str]) -> JSON:
    listed = [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]
    return {"metadata": {"name": "rayjob-qwen-1"}, "spec": {"active": True}, "status": {"conditions": listed}}


QUOTA = ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu")
ADMITTED = ("Admitted", "True", "Admitted", "The workload is admitted")
CLUSTER = {"jobId": "qwen-x7k2p", "rayClusterName": "qwen-raycluster-x7k2p"}
DASHBOARD = {"dashboardURL": "qwen-raycluster-x7k2p-head-svc.team-a.svc:8265"}
TO_RUNNING: list[tuple[JSON, JSON | None]] = [
    (rayjob(suspend=True), None),  # created; Kueue's webhook suspended it
    (rayjob(suspend=True), workload()),  # Kueue made the Workload
    (rayjob(suspend=True, jobDeploymentStatus="Suspended"), workload()),  # KubeRay's first status
    (rayjob(suspend=True, jobDeploymentStatus="Suspended"), workload(QUOTA)),
    (rayjob(suspend=True, jobDeploymentStatus="Suspended"), workload(QUOTA, ADMITTED)),
    (rayjob(suspend=False, jobDeploymentStatus="Suspended"), workload(QUOTA, ADMITTED)),  # Kueue unsuspends it
    (rayjob(suspend=False, jobDeploymentStatus="Initializing", **CLUSTER), workload(QUOTA, ADMITTED)),
    (rayjob(suspend=False, jobDeploymentStatus="Initializing", **CLUSTER, **DASHBOARD), workload(QUOTA, ADMITTED)),
    (
        rayjob(suspend=False, jobDeploymentStatus="Running", jobStatus="PENDING", **CLUSTER, **DASHBOARD),
        workload(QUOTA, ADMITTED),
    ),
    (
        rayjob(suspend=False, jobDeploymentStatus="Running", jobStatus="RUNNING", **CLUSTER, **DASHBOARD),
        workload(QUOTA, ADMITTED),
    ),
]


def writer_for(client: RecordingClient) -> StatusWriter:
    kube = cast("KubeClient", client)
    return StatusWriter(kube, RunCache(), EventRecorder(kube, instance="test"), OperatorMetrics())


async def reconcile(
    writer: StatusWriter, client: RecordingClient, rj: JSON, wl: JSON | None, now: datetime
) -> StatusUpdate | None:
    """One reconcile's status step, from the run as the API server now has it."""
    body = copy.deepcopy(client.run)
    previous = TrainingRunStatus.model_validate(body.get("status") or {})
    observed = Observed(generation=1, suspend=False, queued=True, now=now, rayjob=rj, workload=wl)
    return await writer.write(body, previous, observed)


def test_a_queued_run_going_to_running_writes_its_status_only_for_what_a_reader_acts_on() -> None:
    async def scenario() -> None:
        client = RecordingClient(a_run())
        writer = writer_for(client)
        for offset, (rj, wl) in enumerate(TO_RUNNING):
            await reconcile(writer, client, rj, wl, START + timedelta(seconds=offset * 0.5))
        phases = [p["status"].get("phase") for p in client.patches]
        # Queued; Admitted=True (what `kubectl wait --for=condition=Admitted` and the environment servers follow);
        # Starting; Running. Each reason and message on the way (WorkloadPending, Pending, RayJobSuspended,
        # AdmittedNotStarted, the dashboard's address...) went with the next of these, not on its own.
        assert phases == ["Queued", None, "Starting", "Running"], client.patches
        status = client.run["status"]
        assert status["attempts"][0]["rayJobID"] == "qwen-x7k2p"
        assert status["rayCluster"] == "qwen-raycluster-x7k2p"
        assert status["dashboardURL"].startswith("http://qwen-raycluster-x7k2p-head-svc")
        ready = next(c for c in status["conditions"] if c["type"] == "ClusterReady")
        assert (ready["status"], ready["reason"]) == ("True", "RayClusterReady")

    asyncio.run(scenario())


def test_words_that_hold_are_written_once_they_have_held_for_the_settle_time() -> None:
    async def scenario() -> None:
        client = RecordingClient(a_run())
        writer = writer_for(client)
        await reconcile(writer, client, rayjob(suspend=True), None, START)
        full = (
            "QuotaReserved",
            "False",
            "Pending",
            "couldn't assign flavors to pod set head: insufficient unused quota for nvidia.com/gpu in flavor gpu",
        )
        waiting = await reconcile(writer, client, rayjob(suspend=True), workload(full), START + timedelta(seconds=1))
        assert waiting is not None and waiting.write_in == SETTLE_SECONDS
        assert len(client.patches) == 1  # Queued, "waiting for Kueue to create the Workload"
        later = START + timedelta(seconds=1 + SETTLE_SECONDS / 2)
        still = await reconcile(writer, client, rayjob(suspend=True), workload(full), later)
        assert still is not None and still.write_in == SETTLE_SECONDS / 2
        assert len(client.patches) == 1
        held = START + timedelta(seconds=1 + SETTLE_SECONDS)
        written = await reconcile(writer, client, rayjob(suspend=True), workload(full), held)
        assert written is not None and written.write_in is None
        assert len(client.patches) == 2
        assert "insufficient unused quota" in client.run["status"]["message"]
        admitted = next(c for c in client.run["status"]["conditions"] if c["type"] == "Admitted")
        assert (admitted["status"], admitted["reason"]) == ("False", "Pending")
        # Nothing left to say: no write, nothing waiting.
        idle = await reconcile(writer, client, rayjob(suspend=True), workload(full), held + timedelta(seconds=30))
        assert idle is not None and idle.write_in is None and len(client.patches) == 2

    asyncio.run(scenario())
