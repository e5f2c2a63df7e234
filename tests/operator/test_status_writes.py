"""A phase transition is written, posted as an Event and observed in the metrics once, even when its write is
refused or overtaken, on the real control plane; and a run on its way to Running is written only for what someone
acts on, counted by the API server's audit log.

The races are made to order (`interleave`): the operator's write that takes a run out of Kueue's queue is first
refused, then beaten by a trainer status patch that lands while the write is inside the API server.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from localcluster.controlplane import LocalCluster
from localcluster.faults import AuditEvent
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import eventually, metric, queued, run_manifest, wait_phase
from tests.operator.interleave import status_writes
from tests.operator.kube import Kube

RUN, FIRST = "waiting", "first"
QUEUED_COUNT = "loka_run_queued_seconds_count"
# Queued, Admitted=True, Starting, Running; and one more for words (a reason, a message, the dashboard's address)
# that held for the settle time on a slow machine. Each reason and message on the way had its own write before.
MAX_WRITES_TO_RUNNING = 5


def _phase(body: dict[str, Any]) -> str | None:
    phase: str | None = (body.get("status") or {}).get("phase")
    return phase


def test_leaving_the_queue_is_counted_and_posted_once_when_its_write_is_refused_then_raced(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str, gpu_queue: str
) -> None:
    kube.create_run(run_manifest(FIRST, ns, **queued(gpu_queue)))  # holds the queue's only 8 GPUs
    wait_phase(kube, ns, FIRST, "Running")
    kube.create_run(run_manifest(RUN, ns, **queued(gpu_queue)))
    wait_phase(kube, ns, RUN, "Queued")
    before = metric(operator, QUEUED_COUNT)
    leaving: list[str] = []

    def refuse_then_race(old: dict[str, Any], new: dict[str, Any]) -> bool:
        if new["metadata"]["name"] != RUN or _phase(old) != "Queued" or _phase(new) in (None, "Queued"):
            return True
        leaving.append(str(_phase(new)))
        if len(leaving) == 1:
            return False  # refused: the reconcile fails, and is tried again
        if len(leaving) == 2:  # a trainer patch lands first, the write meets a newer run
            kube.patch_run_status(ns, RUN, {"progress": {"step": 1}})
        return True

    with status_writes(cluster, kube.api, ns) as writes:
        writes.hook = refuse_then_race
        kube.delete_run(ns, FIRST)  # its quota goes back to the queue: Kueue admits the waiting run
        eventually(lambda: _phase(kube.run(ns, RUN) or {}) not in (None, "Queued"), timeout=90, what="admission")
    eventually(lambda: metric(operator, QUEUED_COUNT) > before, what="the time queued observed")
    time.sleep(1.0)  # a window for a second observation or Event to show in, not a wait for state
    assert len(leaving) >= 2, leaving
    assert metric(operator, QUEUED_COUNT) - before == 1
    reasons = collections.Counter(e.reason for e in kube.events(ns, RUN))
    assert all(count == 1 for count in reasons.values()), reasons


def operator_status_writes(cluster: LocalCluster, ns: str, name: str) -> list[AuditEvent]:
    """The operator's status writes of the run that landed, from the API server's audit log."""
    return [
        e
        for e in cluster.audit_log.events()
        if (e.verb, e.resource, e.namespace, e.name) == ("patch", "trainingruns/status", ns, name)
        and e.user_agent.startswith("loka-operator")
        and e.landed
    ]


def test_a_queued_run_reaches_running_with_a_status_write_per_change_that_matters(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str, gpu_queue: str
) -> None:
    kube.create_run(run_manifest(RUN, ns, **queued(gpu_queue)))
    status = wait_phase(kube, ns, RUN, "Running")
    writes = operator_status_writes(cluster, ns, RUN)  # the audit log is written before each answer
    assert 3 <= len(writes) <= MAX_WRITES_TO_RUNNING, "\n".join(map(str, writes))
    # What the words said on the way went with the writes that mattered: the Running run's status is complete.
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {t: conditions[t]["status"] for t in ("Admitted", "ClusterReady", "Training")} == dict.fromkeys(
        ("Admitted", "ClusterReady", "Training"), "True"
    )
    assert status["rayCluster"] and status["attempts"][0]["rayJobID"], status
    reasons = collections.Counter(e.reason for e in kube.events(ns, RUN))
    assert reasons["Running"] == 1, reasons
