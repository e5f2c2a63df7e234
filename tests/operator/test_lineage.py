"""spec.model.fromRun on the real control plane: the run waits for its source's checkpoint (Pending, SourceReady
names the source), launches from it once it exists, and fails when the source fails or is deleted.

The source's trainer is stood in for as the operator tests do elsewhere: its RayJob's end is written into the
RayJob status, its checkpoint into the run's status (the fields the trainer owns).
"""

from __future__ import annotations

import re
import time
from typing import Any

from localcluster.operator_process import OperatorProcess
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


def grpo_manifest(ns: str, checkpoint: str = "final") -> dict[str, Any]:
    return run_manifest(GRPO, ns, model={"fromRun": {"name": SFT, "checkpoint": checkpoint}})


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
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    source = kube.create_run(sft_manifest(ns))
    wait_phase(kube, ns, SFT, "Running")
    kube.create_run(grpo_manifest(ns))

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
    drive_rayjob(kube, ns, SFT, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, SFT, "Succeeded")

    rayjob = eventually(lambda: kube.rayjob(ns, GRPO), timeout=60, what="the run to launch once the source succeeded")
    assert rayjob["metadata"]["name"] == GRPO
    status = kube.status(ns, GRPO)
    assert status["source"] == {
        "run": SFT,
        "uid": source["metadata"]["uid"],
        "step": 40,
        "uri": f"s3://loka/checkpoints/{ns}/{SFT}/{source['metadata']['uid']}/global_step_40",  # keyed by its uid
    }
    assert kube.condition(ns, GRPO, "SourceReady")["status"] == "True"

    # The lineage is the run's own record: deleting the source changes nothing in it.
    kube.delete_run(ns, SFT)
    eventually(lambda: kube.run(ns, SFT) is None, timeout=60, what="the source to be deleted")
    wait_phase(kube, ns, GRPO, "Running")
    assert kube.status(ns, GRPO)["source"]["step"] == 40


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
