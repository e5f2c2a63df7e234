"""A reconcile that keeps failing backs off even while events keep coming; a deleted run's reconcile stops at once.

Each test runs its own operator (its metrics count only this test's runs) and breaks RayJob creation with an
admission webhook, as a cluster with a webhook whose service is down would.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import eventually, fresh_namespace, metric, run_manifest, wait_phase
from tests.operator.kube import Kube
from tests.operator.webhooks import SilentServer, rayjob_webhook, unreachable_url

RUN = "qwen"
ERRORS = 'loka_reconcile_total{result="error"}'


@contextmanager
def own_operator(
    cluster: LocalCluster, kube: Kube, log: Path, labels: dict[str, str]
) -> Iterator[tuple[str, OperatorProcess]]:
    """An operator of its own over one fresh namespace with `labels`."""
    prefix = f"lokafl-{uuid.uuid4().hex[:4]}-"
    operator = OperatorProcess(cluster, log, namespace_prefix=prefix)
    operator.start()
    namespaces = fresh_namespace(kube, prefix, labels)
    try:
        yield next(namespaces), operator
    finally:
        operator.stop()
        next(namespaces, None)


def failed_reconciles(operator: OperatorProcess) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in operator.metrics().splitlines() if line.startswith(ERRORS))


def test_a_run_whose_reconcile_keeps_failing_backs_off_while_events_keep_coming(
    cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path
) -> None:
    with (
        rayjob_webhook(kube.api, unreachable_url(), timeout_seconds=5) as labels,
        own_operator(cluster, kube, tmp_path / "operator.log", labels) as (ns, operator),
    ):
        kube.create_run(run_manifest(RUN, ns))
        eventually(lambda: failed_reconciles(operator) >= 1, what="the first failed reconcile (the webhook is down)")
        started = time.monotonic()
        for touch in range(60):  # the run keeps changing: every change is an event
            kube.custom.patch_namespaced_custom_object(
                "loka.dev", "v1alpha1", ns, "trainingruns", RUN, {"metadata": {"annotations": {"touch": str(touch)}}}
            )
        elapsed = time.monotonic() - started
        failed = failed_reconciles(operator)
        # Backing off from 1 s and doubling, the retries within `elapsed` seconds are few, whatever the events.
        allowed = 2 + math.ceil(math.log2(elapsed + 1))
        assert failed <= allowed, f"{failed:.0f} failed reconciles in {elapsed:.1f}s of events (allowed {allowed})"
        assert "failed calling webhook" in operator.log_tail(400)


def test_deleting_a_run_cancels_its_reconcile_in_flight(
    cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path
) -> None:
    pki = cluster.layout.pki
    with (
        # A webhook that completes TLS and never answers: the create hangs the webhook's whole 30 s (10 s, the TLS
        # handshake timeout, without a certificate: too short a window for a loaded machine to delete the run in).
        SilentServer(tls=(pki.serving_crt, pki.serving_key)) as webhook,
        rayjob_webhook(kube.api, webhook.url, timeout_seconds=30, ca_bundle=pki.ca_crt.read_bytes()) as labels,
        own_operator(cluster, kube, tmp_path / "operator.log", labels) as (ns, operator),
    ):
        kube.create_run(run_manifest(RUN, ns))
        eventually(webhook.called.is_set, what="the RayJob create to reach the webhook (and hang there)")
        assert metric(operator, "loka_reconciles_in_flight") == 1

        kube.delete_run(ns, RUN)
        eventually(lambda: kube.run(ns, RUN) is None, what="the run to be gone")
        eventually(lambda: metric(operator, "loka_reconciles_in_flight") == 0, what="the reconcile to stop")
        # The API server gives up on the webhook only now: a reconcile still waiting for it would fail and retry.
        eventually(webhook.ended.is_set, timeout=45, what="the API server to give up on the webhook")
        # Sync point: once the operator has handled a run created after that, it has seen any answer that came.
        kube.create_run(run_manifest("probe", ns, suspend=True))
        wait_phase(kube, ns, "probe", "Suspended")
        assert failed_reconciles(operator) == 0
        assert f"reconcile of {ns}/{RUN} failed" not in operator.log_tail(400)
