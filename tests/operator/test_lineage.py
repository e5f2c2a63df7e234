"""spec.model.fromRun on the real control plane: the run waits for its source's checkpoint (Pending, SourceReady
names the source), launches from it once it exists, and fails when the source fails or is deleted.

The source's trainer is stood in for as the operator tests do elsewhere: its RayJob's end is written into the
RayJob status, its checkpoint into the run's status (the fields the trainer owns) and, where the test needs it, into
MinIO the way the trainer writes it (a manifest, then the marker).
"""

from __future__ import annotations

import re
import time
from typing import Any

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.operator_process import OperatorProcess
from loka_api.checkpoints import CheckpointIndex, CheckpointRecord, marker_body
from loka_api.contract import MANIFEST_NAME
from loka_api.manifest import CheckpointManifest, Writer
from loka_api.storage import ObjectStore
from tests.operator.conftest import drive_rayjob, eventually, run_manifest, wait_phase
from tests.operator.kube import Kube

SFT, GRPO = "sft", "grpo"


def sft_manifest(ns: str, **spec: Any) -> dict[str, Any]:
    return run_manifest(
        SFT,
        ns,
        algorithm="sft",
        data={"train": "s3://loka/data/demos/train.parquet", "responseKey": "response"},
        **spec,
    )


def grpo_manifest(ns: str, checkpoint: str = "final", **spec: Any) -> dict[str, Any]:
    return run_manifest(GRPO, ns, model={"fromRun": {"name": SFT, "checkpoint": checkpoint}}, **spec)


def s3_storage(cluster: LocalCluster, kube: Kube, ns: str) -> dict[str, Any]:
    """spec.storage on the local MinIO, with the credentials Secret it names."""
    env = cluster.env
    keys = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "loka-s3"}, "stringData": keys})
    return {"storage": {"endpoint": cluster.s3_endpoint, "credentialsSecret": "loka-s3"}}


def save_checkpoint_in_s3(cluster: LocalCluster, kube: Kube, ns: str, name: str, step: int) -> None:
    """What the source's trainer writes when a checkpoint is complete: its manifest, then the marker naming it."""
    uid = (kube.run(ns, name) or {})["metadata"]["uid"]
    index = CheckpointIndex.of_run(
        ObjectStore(settings=cluster.env), f"s3://{S3_BUCKET}/checkpoints", namespace=ns, run_name=name, uid=uid
    )
    writer = Writer(1, f"{name}-head")
    manifest = CheckpointManifest(step=step, files=(), created="2026-12-07T04:00:00Z", writer=writer, run_uid=uid)
    index.store.put_bytes(index.step_uri(step).join(MANIFEST_NAME), manifest.to_json())
    record = CheckpointRecord(step, str(index.step_uri(step)), manifest.created)
    index.store.put_bytes(index.marker_uri, marker_body(record, writer))


def report_checkpoint(kube: Kube, ns: str, name: str, step: int) -> None:
    """What the source's trainer patches when a checkpoint is complete."""
    uid = (kube.run(ns, name) or {})["metadata"]["uid"]
    uri = f"s3://loka/checkpoints/{ns}/{name}/{uid}/global_step_{step}"
    kube.custom.patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", ns, "trainingruns", name, {"status": {"checkpoint": {"step": step, "uri": uri}}}
    )


def reconciles(operator: OperatorProcess) -> float:
    found = re.findall(r'^loka_reconcile_total\{result="[a-z]+"\} ([0-9.e+]+)$', operator.metrics(), re.M)
    return sum(float(count) for count in found)


def test_a_run_waits_for_its_sources_final_checkpoint_and_then_launches_from_it(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str
) -> None:
    storage = s3_storage(cluster, kube, ns)
    source = kube.create_run(sft_manifest(ns, **storage))
    wait_phase(kube, ns, SFT, "Running")
    kube.create_run(grpo_manifest(ns, **storage))

    waiting = eventually(
        lambda: kube.condition(ns, GRPO, "SourceReady").get("reason") == "WaitingForSource" and kube.status(ns, GRPO),
        what="the run to wait for its source",
    )
    assert waiting["phase"] == "Pending"
    ready = kube.condition(ns, GRPO, "SourceReady")
    assert ready["status"] == "False"
    assert "run 'sft'" in ready["message"] and "its final checkpoint" in ready["message"]
    assert waiting["source"] == {"run": SFT, "uid": source["metadata"]["uid"]}
    assert kube.rayjob(ns, GRPO) is None, "nothing launches before the source's checkpoint exists"

    # Waiting is event-driven: without news from the source, the operator leaves the run alone.
    before = reconciles(operator)
    time.sleep(5)  # a window to count reconciles in, not a wait for state
    counted = reconciles(operator) - before
    print(f"reconciles in a 5 s window while a run waits for its source: {counted:.0f}")
    assert counted < 10, "a waiting run must not be reconciled in a loop"

    report_checkpoint(kube, ns, SFT, 40)  # a checkpoint, but not the final one: still waiting
    eventually(
        lambda: "checkpoint step 40" in kube.condition(ns, GRPO, "SourceReady").get("message", ""),
        what="the wait to show the source's progress",
    )
    assert kube.rayjob(ns, GRPO) is None
    # The final checkpoint (step 50) is complete in S3, but the trainer's last status patch, best effort, was lost:
    # status still says 40.
    save_checkpoint_in_s3(cluster, kube, ns, SFT, 50)
    drive_rayjob(kube, ns, SFT, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, SFT, "Succeeded")
    assert kube.status(ns, SFT)["checkpoint"]["step"] == 40

    rayjob = eventually(lambda: kube.rayjob(ns, GRPO), timeout=60, what="the run to launch once the source succeeded")
    assert rayjob["metadata"]["name"] == GRPO
    status = kube.status(ns, GRPO)
    assert status["source"] == {
        "run": SFT,
        "uid": source["metadata"]["uid"],
        "step": 50,  # what the source's marker names
        "uri": f"s3://loka/checkpoints/{ns}/{SFT}/{source['metadata']['uid']}/global_step_50",  # keyed by its uid
    }
    assert kube.condition(ns, GRPO, "SourceReady")["status"] == "True"

    # The lineage is the run's own record: deleting the source changes nothing in it.
    kube.delete_run(ns, SFT)
    eventually(lambda: kube.run(ns, SFT) is None, timeout=60, what="the source to be deleted")
    wait_phase(kube, ns, GRPO, "Running")
    assert kube.status(ns, GRPO)["source"]["step"] == 50


def test_a_failed_source_fails_the_waiting_run_with_its_reason(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(sft_manifest(ns))
    wait_phase(kube, ns, SFT, "Running")
    kube.create_run(grpo_manifest(ns, checkpoint="latest"))
    eventually(lambda: kube.condition(ns, GRPO, "SourceReady").get("status") == "False", what="the run to wait")

    kube.custom.patch_namespaced_custom_object_status(
        "ray.io", "v1", ns, "rayjobs", SFT,
        {"status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                    "message": "trainer failed: out of memory"}},
    )  # fmt: skip
    failed = wait_phase(kube, ns, GRPO, "Failed")
    condition = kube.condition(ns, GRPO, "Failed")
    assert condition["reason"] == "SourceFailed"
    assert "source run 'sft' failed before it had a checkpoint" in condition["message"]
    assert failed["completionTime"]
    assert kube.rayjob(ns, GRPO) is None
    warnings = [e for e in kube.events(ns, GRPO) if e.type == "Warning"]
    assert any(e.reason == "Failed" for e in warnings)


def test_deleting_the_source_while_a_run_waits_fails_that_run(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(sft_manifest(ns))
    kube.create_run(grpo_manifest(ns))
    eventually(lambda: (kube.status(ns, GRPO).get("source") or {}).get("uid"), what="the source's uid recorded")

    kube.delete_run(ns, SFT)
    wait_phase(kube, ns, GRPO, "Failed")
    condition = kube.condition(ns, GRPO, "Failed")
    assert condition["reason"] == "SourceDeleted"
    assert "source run 'sft' was deleted before it had its final checkpoint" in condition["message"]


def test_a_run_created_before_its_source_waits_for_it_to_appear(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(grpo_manifest(ns, checkpoint="latest"))  # GitOps tools apply in any order
    eventually(lambda: kube.condition(ns, GRPO, "SourceReady").get("reason") == "SourceNotFound", what="waiting")
    assert kube.phase(ns, GRPO) == "Pending"

    kube.create_run(sft_manifest(ns))
    wait_phase(kube, ns, SFT, "Running")
    report_checkpoint(kube, ns, SFT, 10)
    eventually(lambda: kube.rayjob(ns, GRPO), timeout=60, what="the run to launch from the first checkpoint")
    assert kube.status(ns, GRPO)["source"]["step"] == 10


def test_a_source_pins_the_checkpoint_a_waiting_run_recorded_until_it_has_its_own(
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    kube.create_run(sft_manifest(ns))
    wait_phase(kube, ns, SFT, "Running")
    report_checkpoint(kube, ns, SFT, 10)
    grpo = kube.create_run(grpo_manifest(ns, checkpoint="latest"))
    pinned = eventually(lambda: (kube.status(ns, SFT) or {}).get("pins"), what="the source to pin step 10")
    assert pinned == [{"step": 10, "run": GRPO, "uid": grpo["metadata"]["uid"]}]

    report_checkpoint(kube, ns, SFT, 20)  # the source trains on: the pin stays on what the dependent recorded
    report_checkpoint(kube, ns, GRPO, 1)  # the dependent saved a checkpoint of its own: it needs step 10 no more
    eventually(lambda: not (kube.status(ns, SFT) or {}).get("pins"), what="the pin to be released")

    kube.custom.patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", ns, "trainingruns", GRPO, {"status": {"checkpoint": None}}
    )  # (as if it had none yet) and then it is deleted: the pin goes with it
    eventually(lambda: (kube.status(ns, SFT) or {}).get("pins"), what="the pin back while it has no checkpoint")
    kube.custom.delete_namespaced_custom_object("loka.dev", "v1alpha1", ns, "trainingruns", GRPO)
    eventually(lambda: not (kube.status(ns, SFT) or {}).get("pins"), what="the pin released on deletion")
