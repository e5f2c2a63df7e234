"""A reward model given by fromRun (spec.reward.components[].rewardModel.fromRun), through the real operator, Kueue
and KubeRay: the run waits for the rm run's final checkpoint as for spec.model.fromRun, records it in
status.rewardModels, then gets a Deployment and a Service serving that checkpoint, owned by the run, inside its
NetworkPolicy, counted in its Kueue Workload, and gone with the run; the source keeps the checkpoint pinned meanwhile.

The rm run's trainer is stood in for as in test_lineage.py (its end written into its RayJob, its final checkpoint into
MinIO: a manifest, then the marker). KWOK runs the server's pods, so no model is loaded: what is asserted is what the
pods are given.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from loka_operator import naming
from tests.operator.conftest import drive_rayjob, eventually, queued, run_manifest, wait_phase
from tests.operator.kube import Kube
from tests.operator.test_lineage import s3_storage, save_checkpoint_in_s3

RM, GRPO = "rm-1", "grpo-2"
SERVER = "grpo-2-rm-prefs"
REWARD = {
    "components": [
        {"name": "correct", "kind": "function", "function": "loka_trainer.rewards.gsm8k:compute_score"},
        {
            "name": "prefs",
            "kind": "rewardModel",
            "weight": 0.5,
            "rewardModel": {"fromRun": {"name": RM}, "serving": {"cpu": "1", "memory": "2Gi"}},
        },
    ]
}


def read(reader: Any, name: str, ns: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = reader(name, ns).to_dict()
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def test_a_reward_model_from_a_finished_rm_run_is_served_for_the_run_counted_by_kueue_and_gone_with_it(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str, gpu_queue: str
) -> None:
    apps: Any = client.AppsV1Api(kube.api)
    networking: Any = client.NetworkingV1Api(kube.api)
    storage = s3_storage(cluster, kube, ns)
    rm = kube.create_run(
        run_manifest(
            RM,
            ns,
            algorithm="rm",
            engine="trl",
            data={"train": "s3://loka/evals/eval-1/preferences.jsonl"},
            resources={"workers": 0, "gpusPerWorker": 0, "head": {"cpu": "1", "memory": "2Gi"}},
            **storage,
        )
    )
    kube.create_run(run_manifest(GRPO, ns, reward=REWARD, **storage, **queued(gpu_queue)))

    # It waits for the rm run's final checkpoint, as for spec.model.fromRun: nothing launches, nothing is served.
    waiting = eventually(
        lambda: kube.condition(ns, GRPO, "RewardModelsReady").get("status") == "False" and kube.status(ns, GRPO),
        what="the run to wait for its reward model's source",
    )
    assert waiting["phase"] == "Pending"
    assert "rewardModel.fromRun" in waiting["message"] or "run 'rm-1'" in waiting["message"]
    assert waiting["rewardModels"] == [{"component": "prefs", "run": RM, "uid": rm["metadata"]["uid"]}]
    assert kube.rayjob(ns, GRPO) is None and read(apps.read_namespaced_deployment, SERVER, ns) is None

    # The rm run ends: its final checkpoint (marked in S3) is recorded, then the run launches with its server.
    save_checkpoint_in_s3(cluster, kube, ns, RM, 20)
    eventually(lambda: kube.rayjob(ns, RM), what="the rm run's RayJob")
    drive_rayjob(kube, ns, RM, "Complete", "SUCCEEDED")
    wait_phase(kube, ns, RM, "Succeeded")
    # Through Kueue and KubeRay (a queued run, its server's worker group counted): under a loaded suite that chain
    # alone took over 90 s (bench/reconcile.py measured apply -> Running p50 50-90 s at load 5-10).
    status = wait_phase(kube, ns, GRPO, "Running", timeout=240)
    checkpoint = f"s3://loka/checkpoints/{ns}/{RM}/{rm['metadata']['uid']}/global_step_20"
    assert status["rewardModels"] == [
        {"component": "prefs", "run": RM, "uid": rm["metadata"]["uid"], "step": 20, "uri": checkpoint}
    ]

    # Kueue counts the server with the run: its one Workload holds a pod set of the server's shape.
    (workload,) = kube.workloads(ns)
    pod_sets = {p["name"]: p for p in workload["spec"]["podSets"]}
    assert pod_sets["rm-prefs"]["count"] == 1
    admitted = {p["name"]: p for p in workload["status"]["admission"]["podSetAssignments"]}
    assert admitted["rm-prefs"]["resourceUsage"] == {"cpu": "1", "memory": "2Gi"}

    # Admitted: the Deployment serves the source's checkpoint; KubeRay starts no Ray pod for the quota group.
    def serving() -> dict[str, Any] | None:
        found = read(apps.read_namespaced_deployment, SERVER, ns)
        return found if found is not None and found["status"].get("ready_replicas") == 1 else None

    deployment = eventually(serving, what="the reward model server's pod to be ready")
    assert kube.pods(ns, "ray.io/group=rm-prefs") == []
    pod = deployment["spec"]["template"]["spec"]
    (stage,) = pod["init_containers"]
    assert checkpoint in stage["command"]
    (server,) = pod["containers"]
    assert server["command"][:3] == ["python", "-m", "loka_trainer.rm_server"]
    service = read(kube.core.read_namespaced_service, SERVER, ns)
    assert service is not None and service["spec"]["ports"][0]["port"] == 8000
    for child in (deployment, service):
        (owner,) = child["metadata"]["owner_references"]
        assert (owner["kind"], owner["name"]) == ("TrainingRun", GRPO)

    # Only the run's pods reach it: the run's NetworkPolicy selects the server's pods and admits only the run's.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels
    policy = networking.read_namespaced_network_policy(naming.network_policy_name(GRPO), ns).to_dict()
    assert policy["spec"]["pod_selector"]["match_labels"].items() <= pod_labels.items()

    # The rm run keeps the served checkpoint pinned while the run runs (its pruning keeps it).
    eventually(
        lambda: [(p["step"], p["run"]) for p in kube.status(ns, RM).get("pins", [])] == [(20, GRPO)],
        what="the rm run to pin the checkpoint its reward model serves",
    )

    # Gone with the run; the pin goes with it.
    kube.delete_run(ns, GRPO)
    eventually(
        lambda: (
            read(apps.read_namespaced_deployment, SERVER, ns) is None
            and read(kube.core.read_namespaced_service, SERVER, ns) is None
            and not kube.status(ns, RM).get("pins")
        ),
        what="the server's Deployment and Service to be collected with the run, and the pin released",
    )
