"""A RewardCycle on the real control plane: it stamps out its first iteration as a TrainingRun, an Evaluation and a
TrainingRun it owns, chained by their own fields, which wait for each other as they would applied by hand; a failed
burst fails the stages after it and the cycle, naming it; deleting the cycle deletes its stages.

The next iteration's creation (once the reward model succeeded) is the planner's (tests/unit/operator/
test_cycle_stamping.py) and `make demo-cycle` runs it for real.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import LocalCluster
from localcluster.tools import REPO
from loka_api import kinds
from loka_operator import naming
from tests.operator.conftest import drive_rayjob, eventually, wait_phase
from tests.operator.kube import Kube
from tests.operator.test_evaluations import loka

CYCLES, EVALUATIONS, RUNS = kinds.REWARD_CYCLE, kinds.EVALUATION, kinds.TRAINING_RUN


def cycle_manifest(ns: str, cq: str, s3: str) -> dict[str, Any]:
    """The GPU example, in this namespace, queue and MinIO."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "cycle" / "reward-cycle.yaml").read_text())
    body["metadata"] = {"name": "c", "namespace": ns}
    spec = body["spec"]
    spec["iterations"] = 2
    for template in (spec["rl"], spec["rewardModel"]):
        template["queue"] = {"name": "team-a", "clusterQueue": cq}
        template["storage"]["endpoint"] = s3
    spec["evaluation"]["storage"]["endpoint"] = s3
    spec["evaluation"]["judges"] = [{"name": "j", "endpoint": "http://judge:8000/v1", "model": "m"}]
    return body


def cycle(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get(*CYCLES.gvr, ns, "c") or {}


def owned_by(body: dict[str, Any], uid: str) -> bool:
    refs = body["metadata"].get("ownerReferences") or []
    return [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [("RewardCycle", uid, True)]


def test_the_api_server_refuses_a_cycle_that_cannot_chain_naming_field_value_and_what_is_accepted(
    cluster: LocalCluster, kube: Kube, ns: str
) -> None:
    body = cycle_manifest(ns, "cq", cluster.s3_endpoint)
    body["metadata"]["name"] = "c" * 42
    body["spec"]["rl"]["algorithm"] = "sft"
    del body["spec"]["rl"]["rollouts"]
    body["spec"]["rewardModel"]["data"]["train"] = "s3://loka/prefs.jsonl"
    body["spec"]["reward"]["rewardModel"]["fromRun"] = {"name": "rm-of-my-own"}
    with pytest.raises(ApiException) as refused:
        kube.custom.create_namespaced_custom_object(CYCLES.group, CYCLES.version, ns, CYCLES.plural, body)
    said = json.loads(refused.value.body or "{}")["message"]
    assert "spec.rl.algorithm: Invalid value" in said
    assert "rl.algorithm must be an RL algorithm that keeps rollouts (grpo, rloo, reinforce_plus_plus, remax)" in said
    assert "rl.rollouts and rl.checkpoints must be set" in said
    assert "rewardModel.data.train and rewardModel.data.fromEvaluation are the cycle's to set" in said
    assert "reward.rewardModel.fromRun is the cycle's to set" in said
    assert "metadata.name must start with a letter" in said and "at most 41 characters" in said


@pytest.mark.usefixtures("operator")
def test_a_cycle_stamps_out_owned_chained_stages_fails_with_its_burst_and_takes_them_when_deleted(
    cluster: LocalCluster, kube: Kube, ns: str, gpu_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    encoded = {k: base64.b64encode(b"x").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "loka-s3"}, "data": encoded})
    kube.custom.create_namespaced_custom_object(
        CYCLES.group, CYCLES.version, ns, CYCLES.plural, cycle_manifest(ns, gpu_queue, cluster.s3_endpoint)
    )
    uid = eventually(lambda: cycle(kube, ns).get("metadata", {}).get("uid"), what="the cycle")

    # Iteration 1's three stages, owned by the cycle, each linked to the one before by its own field.
    rl = eventually(lambda: kube.run(ns, "c-1-rl"), what="the first burst")
    evaluation = eventually(lambda: kube.get(*EVALUATIONS.gvr, ns, "c-1-eval"), what="its Evaluation")
    rm = eventually(lambda: kube.run(ns, "c-1-rm"), what="its reward model")
    for stage in (rl, evaluation, rm):
        assert owned_by(stage, uid), stage["metadata"]
        assert stage["metadata"]["labels"][naming.LABEL_CYCLE] == "c"
    assert evaluation["spec"]["rollouts"]["fromRun"] == "c-1-rl"
    assert evaluation["spec"]["output"]["uri"] == "s3://ckpt/evals/c-1-eval"
    assert rm["spec"]["data"]["fromEvaluation"] == "c-1-eval"
    assert kube.run(ns, "c-2-rl") is None  # the next burst waits for the reward model it is rewarded by

    # They wait for each other as they would applied by hand, and the cycle says which stage it is at. A stage
    # reconciled before the operator saw the stage it waits for says that one is missing; the change of words alone
    # is written within the status writer's settle time (30 s).
    eventually(
        lambda: (
            (e := kube.get(*EVALUATIONS.gvr, ns, "c-1-eval") or {}).get("status", {}).get("phase") == "Pending"
            and "waiting for run 'c-1-rl' to succeed" in e["status"].get("message", "")
        ),
        timeout=90,
        what="the Evaluation to wait for its burst to succeed",
    )
    eventually(
        lambda: (
            (s := kube.status(ns, "c-1-rm")).get("phase") == "Pending"
            and "waiting for Evaluation 'c-1-eval' to succeed" in s.get("message", "")
        ),
        timeout=90,
        what="the reward model's run to wait for the Evaluation to succeed",
    )
    status = eventually(lambda: (s := cycle(kube, ns).get("status") or {}).get("phase") == "Running" and s,
                        what="the cycle to run")  # fmt: skip
    assert (status["iteration"], status["stage"]) == (1, "c-1-rl")
    assert [[s["name"] for s in row["stages"]] for row in status["iterations"]] == [["c-1-rl", "c-1-eval", "c-1-rm"]]
    header, row = cluster.kubectl("get", "rewardcycles", "-n", ns).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "ITERATION", "OF", "STAGE", "STAGE-PHASE", "AGE"]
    assert row.split()[:5] == ["c", "Running", "1", "2", "c-1-rl"]
    # `loka cycle`: the same columns, and each stage with its phase and the field that links it to the one before.
    code, listed = loka(capsys, cluster, ns, "cycle", "list")
    assert code == 0 and listed.splitlines()[1].split()[:5] == ["c", "Running", "1", "2", "c-1-rl"]
    code, shown = loka(capsys, cluster, ns, "cycle", "status", "c")
    stages = [
        line.split()[:3] for line in shown.splitlines() if line.split()[:1] in (["rl"], ["evaluation"], ["rewardModel"])
    ]
    assert code == 0 and stages == [
        ["rl", "TrainingRun", "c-1-rl"],
        ["evaluation", "Evaluation", "c-1-eval"],
        ["rewardModel", "TrainingRun", "c-1-rm"],
    ]
    assert "<- rollouts.fromRun c-1-rl" in shown and "<- data.fromEvaluation c-1-eval" in shown
    assert "iteration 2 of 2: not created yet (once c-1-rm succeeded)" in shown

    # The burst fails: the stages after it fail on their own, and the cycle fails naming it.
    eventually(lambda: kube.rayjob(ns, "c-1-rl"), timeout=90, what="the burst's RayJob")
    drive_rayjob(kube, ns, "c-1-rl", "Failed", "FAILED", message="trainer exited 1")
    wait_phase(kube, ns, "c-1-rl", "Failed")
    failed = eventually(lambda: (s := cycle(kube, ns).get("status") or {}).get("phase") == "Failed" and s,
                        what="the cycle to fail")  # fmt: skip
    assert failed["message"].startswith("iteration 1: TrainingRun c-1-rl failed"), failed["message"]
    code, waited = loka(capsys, cluster, ns, "cycle", "wait", "c", "--timeout", "30")
    assert code == 1 and f"RewardCycle {ns}/c failed: iteration 1: TrainingRun c-1-rl failed" in waited
    assert wait_phase(kube, ns, "c-1-rm", "Failed")["message"]
    assert kube.run(ns, "c-2-rl") is None

    # Deleting the cycle deletes its stages (garbage collection, by ownerReferences), and theirs.
    kube.custom.delete_namespaced_custom_object(CYCLES.group, CYCLES.version, ns, CYCLES.plural, "c")
    eventually(
        lambda: not kube.list(*RUNS.gvr, ns) and not kube.list(*EVALUATIONS.gvr, ns),
        timeout=60,
        what="the cycle's TrainingRuns and Evaluation to be deleted",
    )
    eventually(lambda: not kube.rayjobs(ns), timeout=60, what="the burst's RayJob to be deleted with it")
