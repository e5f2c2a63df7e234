"""Evaluations are followed like runs: an Event per phase, Prometheus metrics, and Kueue's own words while queued."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any, cast

from loka_api import kinds
from loka_api.evaluation import EvaluationStatus
from loka_api.kinds import Kind
from loka_operator.children import EVALUATION_JOB
from loka_operator.config import OperatorConfig
from loka_operator.evaluations import (
    EvaluationObserved,
    EvaluationReconciler,
    RolloutsState,
    calculate_evaluation_status,
)
from loka_operator.kube import KubeClient
from loka_operator.metrics import OperatorMetrics
from loka_operator.reconcile import Reconciler
from tests.unit.api.test_evaluation_kind import MANIFEST

NS, NAME, KEY = "loka", "eval-1", "loka/eval-1"
NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
ROLLOUTS = "s3://loka/ckpt/loka/grpo-1/u-1/rollouts"
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor cpu-flavor, 1 more needed"
)


def workload(**conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-eval-1-eval-1a2b3", "namespace": NS},
        "spec": {"active": True},
        "status": {
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": message}
                for kind, (status, reason, message) in conditions.items()
            ]
        },
    }


def test_a_queued_evaluation_says_why_in_kueues_words() -> None:
    observed = EvaluationObserved(
        1,
        NOW,
        rollouts=RolloutsState(uri=ROLLOUTS),
        job={"metadata": {"name": "eval-1-eval"}, "spec": {"suspend": True}, "status": {}},
        workload=workload(QuotaReserved=("False", "Pending", NO_QUOTA)),
    )
    status = calculate_evaluation_status(observed, EvaluationStatus(rolloutsURI=ROLLOUTS))
    assert status.phase == "Queued"
    assert status.message == f"waiting for Kueue: {NO_QUOTA}"
    admitted = next(c for c in status.conditions if c.type == "Admitted")
    assert (admitted.status, admitted.reason, admitted.message) == ("False", "Pending", NO_QUOTA)


class FakeApi:
    """The API server as far as one Evaluation's reconcile needs it: its status patches (conditional on the
    resourceVersion, as the API server checks them) and the Events posted."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = copy.deepcopy(body)
        self.events: list[dict[str, Any]] = []

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        assert (kind, subresource) == (kinds.EVALUATION, "status")
        self.body["status"] = {**(self.body.get("status") or {}), **patch["status"]}
        self.body["status"] = {k: v for k, v in self.body["status"].items() if v is not None}
        version = int(self.body["metadata"]["resourceVersion"]) + 1
        self.body["metadata"]["resourceVersion"] = str(version)
        return copy.deepcopy(self.body)

    async def create(self, kind: Kind, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        assert kind == kinds.EVENT
        self.events.append(manifest)
        return manifest

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)


def evaluation_body(**status: Any) -> dict[str, Any]:
    meta = {**MANIFEST["metadata"], "uid": "e-1", "resourceVersion": "1", "generation": 1}
    return {**MANIFEST, "metadata": meta, "status": status}


def failed_source() -> dict[str, Any]:
    return {
        "apiVersion": "loka.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "grpo-1", "namespace": NS, "uid": "u-1", "resourceVersion": "1"},
        "spec": {
            "image": "img",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"train": "s3://loka/data/train.parquet"},
            "checkpoints": {"uri": "s3://loka/ckpt"},
            "rollouts": {"every": 1},
        },
        "status": {"phase": "Failed", "message": "out of memory"},
    }


def reconciler_for(api: FakeApi) -> tuple[EvaluationReconciler, OperatorMetrics]:
    metrics = OperatorMetrics()
    runs = Reconciler(client=cast("KubeClient", api), config=OperatorConfig(), metrics=metrics)
    evaluations = EvaluationReconciler(runs)
    evaluations.cache.observe(copy.deepcopy(api.body))
    return evaluations, metrics


def gauge(metrics: OperatorMetrics, phase: str) -> float:
    return float(metrics.evaluations.labels(phase=phase)._value.get())


def test_each_phase_an_evaluation_enters_is_an_event_and_counted_in_the_metrics() -> None:
    async def scenario() -> None:
        api = FakeApi(evaluation_body())
        evaluations, metrics = reconciler_for(api)
        await evaluations.reconcile(NS, NAME)
        await evaluations.reconcile(NS, NAME)  # nothing new: no second Event
        evaluations.runs.cache.observe(failed_source())
        await evaluations.reconcile(NS, NAME)
        await evaluations.runs.status.events.close()
        said = [(e["type"], e["reason"], e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in api.events]
        assert said == [("Normal", "Pending", "Evaluation", NAME), ("Warning", "Failed", "Evaluation", NAME)]
        assert "source run 'grpo-1' ended without the rollouts" in api.events[1]["message"]
        assert (gauge(metrics, "Pending"), gauge(metrics, "Failed")) == (0, 1)
        evaluations.forget(KEY)
        assert gauge(metrics, "Failed") == 0, "a deleted Evaluation is no longer counted"

    asyncio.run(scenario())


def test_an_evaluation_that_ends_records_how_long_its_job_ran() -> None:
    async def scenario() -> None:
        running = {
            "phase": "Running",
            "rolloutsURI": ROLLOUTS,
            "job": "eval-1-eval",
            "startTime": "2026-12-07T04:00:00Z",
        }
        api = FakeApi(evaluation_body(**running))
        evaluations, metrics = reconciler_for(api)
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "eval-1-eval",
                "namespace": NS,
                "uid": "j-1",
                "resourceVersion": "3",
                "labels": EVALUATION_JOB.labels,
                "ownerReferences": [
                    {
                        "apiVersion": "loka.dev/v1alpha1",
                        "kind": "Evaluation",
                        "name": NAME,
                        "uid": "e-1",
                        "controller": True,
                    }
                ],
            },
            "spec": {"suspend": False},
            "status": {
                "startTime": "2026-12-07T04:00:00Z",
                "completionTime": "2026-12-07T04:01:30Z",
                "conditions": [{"type": "Complete", "status": "True"}],
            },
        }
        evaluations.children.observe(EVALUATION_JOB, KEY, job)
        await evaluations.reconcile(NS, NAME)
        await evaluations.runs.status.events.close()
        assert [e["reason"] for e in api.events] == ["Succeeded"]
        duration = metrics.registry.get_sample_value("loka_evaluation_duration_seconds_sum", {"phase": "Succeeded"})
        assert duration == 90.0
        assert gauge(metrics, "Succeeded") == 1

    asyncio.run(scenario())
