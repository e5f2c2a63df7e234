"""Slack notifications on the real control plane. A local HTTP server stands in for Slack's incoming-webhook
endpoint (the real Slack is not reachable from here); the operator posts to it with the Slack SDK's client.

Every notice goes out exactly once per (run, attempt, transition), whatever races it: the races are made to order
(`interleave`), a trainer status patch landing while the operator's write is inside the API server, against an
operator that keeps the default resync (600 s), so nothing there is rescued by the slow pass.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import (
    NAMESPACE_PREFIX,
    drive_rayjob,
    eventually,
    fresh_namespace,
    run_manifest,
    wait_phase,
)
from tests.operator.interleave import notice, status_writes
from tests.operator.kube import Kube

RUN = "notified"
WEBHOOK_TOKEN = "XyzSecretWebhookToken0123"  # the secret part of a webhook URL: must never be logged


@dataclass
class SlackStandIn:
    """Records each JSON post; the first `fail_first` posts are answered 500, as Slack does when it has trouble."""

    fail_first: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T0LOKA/B0LOKA/{WEBHOOK_TOKEN}"

    def texts(self) -> list[str]:
        return [p["text"] for p in self.posts]


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self.path.endswith(WEBHOOK_TOKEN):
                code, answer = 404, b"no_service"  # Slack's answer for a removed webhook
            elif stand_in.refused < stand_in.fail_first:
                stand_in.refused += 1
                code, answer = 500, b"internal_error"
            else:
                stand_in.posts.append(body)
                code, answer = 200, b"ok"
            self.send_response(code)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    stand_in.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=stand_in.server.serve_forever, daemon=True).start()
    yield stand_in
    stand_in.server.shutdown()


def webhook_secret(kube: Kube, ns: str, url: str) -> None:
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "loka-secrets"}, "stringData": {"slack-webhook": url}})


def notified_run(ns: str, **extra: Any) -> dict[str, Any]:
    notifications = {"slack": {"webhook": {"secret": "loka-secrets", "key": "slack-webhook"}, "channel": "#ml-runs"}}
    return run_manifest(RUN, ns, notifications=notifications, **extra)


def records(kube: Kube, ns: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["event"], r["attempt"]): r for r in kube.status(ns, RUN).get("notifications", [])}


def test_each_transition_is_posted_once_with_retries_and_survives_an_operator_restart(
    operator: OperatorProcess, kube: Kube, ns: str, slack: SlackStandIn
) -> None:
    slack.fail_first = 2  # the first post needs three tries
    webhook_secret(kube, ns, slack.url)
    kube.create_run(notified_run(ns))
    wait_phase(kube, ns, RUN, "Running")
    eventually(
        lambda: records(kube, ns).get(("Started", 1), {}).get("state") == "Sent", timeout=60, what="Started sent"
    )
    started = records(kube, ns)[("Started", 1)]
    assert started["tries"] == 3 and started["sender"]
    assert len(slack.posts) == 1
    (post,) = slack.posts
    assert f"*{ns}/{RUN}* started (attempt 1)" in post["text"]
    assert post["channel"] == "#ml-runs"

    # A restarted operator reconciles the run again, and posts nothing twice.
    operator.kill()
    operator.start()
    kube.patch_run(ns, RUN, {"maxRestarts": 2})  # a change that makes it reconcile the run
    eventually(lambda: kube.status(ns, RUN).get("observedGeneration") == 2, timeout=60, what="the restarted operator")

    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, RUN, "Succeeded")
    eventually(lambda: records(kube, ns).get(("Succeeded", 1), {}).get("state") == "Sent", timeout=60,
               what="Succeeded sent")  # fmt: skip
    assert [t.split("*")[2].strip().split(" (")[0] for t in slack.texts()] == ["started", "succeeded"]
    assert WEBHOOK_TOKEN not in Path(operator.log_path).read_text()


def test_suspension_and_failure_are_posted_with_the_reason(
    operator: OperatorProcess, kube: Kube, ns: str, slack: SlackStandIn
) -> None:
    webhook_secret(kube, ns, slack.url)
    run = notified_run(ns)
    run["spec"]["notifications"]["slack"]["events"] = ["Suspended", "Failed"]
    kube.create_run(run)
    wait_phase(kube, ns, RUN, "Running")
    kube.patch_run(ns, RUN, {"suspend": True})
    wait_phase(kube, ns, RUN, "Suspended")
    eventually(lambda: len(slack.posts) == 1, timeout=60, what="the Suspended post")
    assert "was suspended (attempt 2)" in slack.posts[0]["text"]
    kube.patch_run(ns, RUN, {"suspend": False})
    wait_phase(kube, ns, RUN, "Running", timeout=120)
    kube.custom.patch_namespaced_custom_object_status(
        "ray.io", "v1", ns, "rayjobs", RUN,
        {"status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "OOM"}},
    )  # fmt: skip
    wait_phase(kube, ns, RUN, "Failed")
    eventually(lambda: len(slack.posts) == 2, timeout=60, what="the Failed post")
    assert "failed (attempt 2)" in slack.posts[1]["text"] and "OOM" in slack.posts[1]["text"]
    assert set(records(kube, ns)) == {("Suspended", 2), ("Failed", 2)}  # Started was not asked for


def test_a_removed_webhook_is_recorded_failed_and_the_run_goes_on(
    operator: OperatorProcess, kube: Kube, ns: str, slack: SlackStandIn
) -> None:
    webhook_secret(kube, ns, slack.url.replace(WEBHOOK_TOKEN, "removed"))
    kube.create_run(notified_run(ns))
    wait_phase(kube, ns, RUN, "Running")
    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, RUN, "Succeeded")
    eventually(lambda: records(kube, ns).get(("Succeeded", 1), {}).get("state") == "Failed", timeout=60,
               what="Succeeded recorded as Failed")  # fmt: skip
    failed = records(kube, ns)[("Started", 1)]
    assert (failed["state"], failed["tries"], failed["message"]) == ("Failed", 1, "Slack answered 404: no_service")
    assert slack.posts == []


def test_a_slack_that_never_answers_never_holds_the_run(
    operator: OperatorProcess, kube: Kube, ns: str, slack: SlackStandIn
) -> None:
    slack.fail_first = 1000  # 500 for every try: the post stays in its retries
    webhook_secret(kube, ns, slack.url)
    kube.create_run(notified_run(ns))
    wait_phase(kube, ns, RUN, "Running")
    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, RUN, "Succeeded")  # reconcile never waited on Slack
    assert records(kube, ns)[("Started", 1)]["state"] == "Sending"
    assert slack.posts == [] and slack.refused >= 1


def test_a_missing_webhook_secret_holds_the_run_like_any_referenced_secret(
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    kube.create_run(notified_run(ns))
    eventually(
        lambda: kube.condition(ns, RUN, "SecretsReady").get("reason") == "SecretMissing",
        timeout=60,
        what="SecretsReady=False",
    )
    assert "Secret 'loka-secrets' (keys slack-webhook) does not exist" in kube.status(ns, RUN)["message"]
    assert kube.rayjob(ns, RUN) is None


# Not matched by the session operator's `<prefix>*`: this module's operator has these namespaces to itself.
PREFIX = NAMESPACE_PREFIX.rstrip("-") + "n-"


@pytest.fixture(scope="module")
def slow_resync_operator(
    cluster: LocalCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator-notices") / "loka-operator.log"
    process = OperatorProcess(cluster, log_path, namespace_prefix=PREFIX, resync_seconds=None)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def nns(kube: Kube) -> Iterator[str]:
    yield from fresh_namespace(kube, PREFIX)


def trainer_patch(kube: Kube, ns: str, step: int) -> None:
    """What the run's trainer writes many times a run: its progress (the operator does not reconcile on it)."""
    kube.patch_run_status(ns, RUN, {"progress": {"step": step}})


def started(kube: Kube, ns: str) -> dict[str, Any]:
    return notice(kube.run(ns, RUN) or {}, "Started")


def test_a_notice_whose_record_keeps_losing_races_is_posted_once(
    slow_resync_operator: OperatorProcess, cluster: LocalCluster, kube: Kube, nns: str, slack: SlackStandIn
) -> None:
    webhook_secret(kube, nns, slack.url)
    beaten: list[int] = []

    def beat_the_sent_record(old: dict[str, Any], new: dict[str, Any]) -> bool:
        if notice(new, "Started").get("state") == "Sent" != notice(old, "Started").get("state") and len(beaten) < 6:
            beaten.append(len(beaten))
            trainer_patch(kube, new["metadata"]["namespace"], len(beaten))
        return True

    with status_writes(cluster, kube.api, nns) as writes:
        writes.hook = beat_the_sent_record
        kube.create_run(notified_run(nns))
        wait_phase(kube, nns, RUN, "Running")
        eventually(lambda: len(beaten) >= 5, timeout=30, what="five lost races of the Sent record")
        time.sleep(1.5)  # a window in which a sender that gave up after five lost races would have
        kube.patch_run(nns, RUN, {"maxRestarts": 2})  # a reconcile, which must not post it again
        eventually(lambda: kube.status(nns, RUN).get("observedGeneration") == 2, what="the reconcile")
        eventually(lambda: started(kube, nns).get("state") == "Sent", timeout=30, what="Started recorded Sent")
    time.sleep(1.0)  # a window for a second post to arrive in, not a wait for state
    assert len(slack.posts) == 1, slack.texts()
    assert started(kube, nns)["tries"] == 1


def test_a_claim_that_loses_to_a_trainer_patch_is_posted_at_once(
    slow_resync_operator: OperatorProcess, cluster: LocalCluster, kube: Kube, nns: str, slack: SlackStandIn
) -> None:
    webhook_secret(kube, nns, slack.url)
    beaten: list[int] = []

    def beat_the_claim(old: dict[str, Any], new: dict[str, Any]) -> bool:
        if notice(new, "Started").get("sender") and not notice(old, "Started").get("sender") and not beaten:
            beaten.append(1)
            trainer_patch(kube, new["metadata"]["namespace"], 1)
        return True

    with status_writes(cluster, kube.api, nns) as writes:
        writes.hook = beat_the_claim
        kube.create_run(notified_run(nns))
        wait_phase(kube, nns, RUN, "Running")
        # Nothing else happens to the run: only the sender's own retry can post it before the 600 s resync.
        eventually(lambda: len(slack.posts) == 1, timeout=20, what="the Started post after a lost claim")
    assert beaten, "the claim was raced"
    assert "started (attempt 1)" in slack.posts[0]["text"]
    eventually(lambda: started(kube, nns).get("state") == "Sent", timeout=10, what="Started recorded Sent")
