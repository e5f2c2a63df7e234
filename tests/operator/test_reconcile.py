"""The operator on the real control plane: real KubeRay, real Kueue, KWOK nodes whose pods become Running."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml
from kubernetes import client

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import drive_rayjob, eventually, queued, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "qwen"


def test_run_is_admitted_and_running(operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str) -> None:
    kube.create_run(run_manifest(RUN, ns, **queued(gpu_queue)))

    rayjob = eventually(lambda: kube.rayjob(ns, RUN), timeout=30, what="the RayJob")
    run_uid = (kube.run(ns, RUN) or {})["metadata"]["uid"]
    meta, spec = rayjob["metadata"], rayjob["spec"]
    assert meta["ownerReferences"][0]["uid"] == run_uid
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"] == "loka-trainer run"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == f"loka-run-{RUN}"
    assert head["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"

    # The per-run identity and the LocalQueue exist.
    assert kube.exists("", "v1", "serviceaccounts", ns, f"loka-run-{RUN}")
    role = kube.rbac.read_namespaced_role(f"loka-run-{RUN}", ns)
    assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == [
        (["trainingruns"], [RUN], ["get"]),
        (["trainingruns/status"], [RUN], ["patch"]),
    ]
    assert kube.get("kueue.x-k8s.io", "v1beta2", "localqueues", ns, "team-a") is not None

    status = wait_phase(kube, ns, RUN, "Running")
    pods = kube.pods(ns, f"loka.dev/run={RUN}")
    assert pods and all(pod.status.phase == "Running" for pod in pods)
    assert status["attempt"] == 1
    assert status["rayJob"] == RUN
    assert status["rayCluster"].startswith(RUN)
    assert status["dashboardURL"].startswith("http://")
    assert status["observedGeneration"] == 1
    assert status["startTime"]
    assert kube.condition(ns, RUN, "Admitted")["status"] == "True"
    assert kube.condition(ns, RUN, "ClusterReady")["status"] == "True"
    assert kube.condition(ns, RUN, "Training")["status"] == "True"
    reasons = {event.reason for event in kube.events(ns, RUN)}
    assert {"Queued", "Running"} <= reasons or {"Starting", "Running"} <= reasons


def test_run_waits_with_kueues_reason_when_queue_is_full(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str
) -> None:
    kube.create_run(run_manifest("first", ns, **queued(gpu_queue)))
    wait_phase(kube, ns, "first", "Running")
    kube.create_run(run_manifest("second", ns, **queued(gpu_queue)))

    status = wait_phase(kube, ns, "second", "Queued")
    admitted = eventually(
        lambda: "quota" in (c := kube.condition(ns, "second", "Admitted")).get("message", "") and c,
        what="Kueue's reason on the Admitted condition",
    )
    assert admitted["status"] == "False"
    assert "nvidia.com/gpu" in admitted["message"]
    assert "quota" in kube.status(ns, "second")["message"]
    assert status["queuedSince"]

    kube.delete_run(ns, "first")
    wait_phase(kube, ns, "second", "Running", timeout=120)
    assert "queuedSince" not in kube.status(ns, "second")


def test_preempted_run_is_suspended_in_kueues_words_and_resumes_as_a_new_attempt(
    operator: OperatorProcess, kube: Kube, ns: str, preempting_gpu_queue: str, priorities: tuple[str, str]
) -> None:
    low, high = priorities
    queue = {"name": "team-a", "clusterQueue": preempting_gpu_queue}
    kube.create_run(run_manifest("low", ns, queue={**queue, "priorityClass": low}))
    wait_phase(kube, ns, "low", "Running")
    assert (kube.rayjob(ns, "low") or {})["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == low

    kube.create_run(run_manifest("high", ns, queue={**queue, "priorityClass": high}))
    status = wait_phase(kube, ns, "low", "Suspended", timeout=120)
    assert status["attempt"] == 2
    suspended = kube.condition(ns, "low", "Suspended")
    assert suspended["status"] == "True" and suspended["reason"].startswith("Preempted")
    assert "due to prioritization" in suspended["message"]  # Kueue's own words
    assert "Preempted" in kube.condition(ns, "low", "Admitted")["reason"]
    wait_phase(kube, ns, "high", "Running", timeout=120)

    kube.delete_run(ns, "high")
    status = wait_phase(kube, ns, "low", "Running", timeout=180)
    assert status["attempt"] == 2
    reasons = [e.reason for e in kube.events(ns, "low")]
    assert "Resuming" in reasons or reasons.count("Running") >= 2


def test_missing_secret_waits_and_recovers_when_created(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns, storage={"endpoint": "http://127.0.0.1:9000", "credentialsSecret": "s3"}))

    cond = eventually(
        lambda: (c := kube.condition(ns, RUN, "SecretsReady")).get("status") == "False" and c,
        what="SecretsReady=False",
    )
    assert "'s3'" in cond["message"] and "does not exist" in cond["message"]
    assert kube.phase(ns, RUN) == "Pending"
    assert kube.rayjob(ns, RUN) is None
    assert not kube.exists("", "v1", "serviceaccounts", ns, f"loka-run-{RUN}")

    # A Secret missing one key is still not enough, and the message names the key.
    secret = {"metadata": {"name": "s3"}, "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"minio").decode()}}
    kube.core.create_namespaced_secret(ns, secret)
    eventually(
        lambda: "AWS_SECRET_ACCESS_KEY" in kube.condition(ns, RUN, "SecretsReady").get("message", ""),
        what="the missing key named",
    )
    assert kube.rayjob(ns, RUN) is None

    kube.core.patch_namespaced_secret("s3", ns, {"stringData": {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}})
    eventually(lambda: kube.rayjob(ns, RUN), timeout=30, what="the RayJob once the Secret is complete")
    # The status is written after the RayJob, in the same reconcile: wait for it rather than race it.
    eventually(lambda: kube.condition(ns, RUN, "SecretsReady").get("status") == "True", what="SecretsReady=True")
    rayjob = kube.rayjob(ns, RUN) or {}
    # Secret values never leave the Secret: not in the RayJob, the run's status, or its Events.
    everything = str(rayjob) + str(kube.run(ns, RUN)) + str([e.message for e in kube.events(ns, RUN)])
    assert "s3cr3t-value" not in everything
    assert "secretKeyRef" in str(rayjob)


def test_invalid_overrides_fail_validation_and_a_fix_recovers(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns, verlOverrides=["trainer.totl_epochs=3"]))

    valid = eventually(
        lambda: (c := kube.condition(ns, RUN, "Valid")).get("status") == "False" and c, what="Valid=False"
    )
    assert valid["reason"] == "InvalidVerlOverrides"
    assert "trainer.totl_epochs" in valid["message"]
    assert kube.phase(ns, RUN) == "Failed"
    assert kube.rayjob(ns, RUN) is None
    assert not kube.exists("", "v1", "serviceaccounts", ns, f"loka-run-{RUN}")
    eventually(
        lambda: any(e.reason == "Failed" and e.type == "Warning" for e in kube.events(ns, RUN)),
        what="a Warning Event for the failure",
    )

    kube.patch_run(ns, RUN, {"verlOverrides": ["trainer.total_epochs=3"]})
    eventually(lambda: kube.rayjob(ns, RUN), timeout=30, what="the RayJob after the fix")
    eventually(lambda: kube.condition(ns, RUN, "Valid").get("status") == "True", what="Valid=True")
    wait_phase(kube, ns, RUN, "Running")


def test_suspend_releases_the_cluster_and_resume_starts_a_new_attempt(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str
) -> None:
    kube.create_run(run_manifest(RUN, ns, **queued(gpu_queue)))
    wait_phase(kube, ns, RUN, "Running")

    kube.patch_run(ns, RUN, {"suspend": True})
    status = wait_phase(kube, ns, RUN, "Suspended")
    assert status["attempt"] == 2
    assert kube.condition(ns, RUN, "Suspended")["status"] == "True"
    eventually(lambda: not kube.pods(ns, f"loka.dev/run={RUN}"), timeout=60, what="Ray pods to be gone")
    workload = kube.workloads(ns)[0]
    assert workload["spec"]["active"] is False

    kube.patch_run(ns, RUN, {"suspend": False})
    status = wait_phase(kube, ns, RUN, "Running", timeout=120)
    assert status["attempt"] == 2
    assert kube.workloads(ns)[0]["spec"]["active"] is True


def test_unqueued_run_suspends_through_the_rayjob(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns))
    wait_phase(kube, ns, RUN, "Running")
    kube.patch_run(ns, RUN, {"suspend": True})
    wait_phase(kube, ns, RUN, "Suspended")
    assert (kube.rayjob(ns, RUN) or {})["spec"]["suspend"] is True
    kube.patch_run(ns, RUN, {"suspend": False})
    wait_phase(kube, ns, RUN, "Running", timeout=120)


def test_completion_succeeds_and_ttl_removes_only_the_rayjob(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns, ttlSecondsAfterFinished=3))
    wait_phase(kube, ns, RUN, "Running")

    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
    status = wait_phase(kube, ns, RUN, "Succeeded")
    assert status["completionTime"]
    assert kube.condition(ns, RUN, "Succeeded")["status"] == "True"
    assert kube.condition(ns, RUN, "Training")["status"] == "False"

    eventually(lambda: kube.rayjob(ns, RUN) is None, timeout=60, what="the RayJob to be removed after the TTL")
    kept = kube.status(ns, RUN)
    assert kept["phase"] == "Succeeded" and kept["rayJob"] == RUN
    # A finished run is never relaunched.
    assert kube.rayjob(ns, RUN) is None


def test_failed_rayjob_fails_the_run_with_kuberays_reason(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns))
    wait_phase(kube, ns, RUN, "Running")
    kube.custom.patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        ns,
        "rayjobs",
        RUN,
        {"status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": "boom"}},
    )
    wait_phase(kube, ns, RUN, "Failed")
    failed = kube.condition(ns, RUN, "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "AppFailed", "boom")


def test_deleting_a_run_removes_its_children(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns))
    eventually(lambda: kube.rayjob(ns, RUN), timeout=30, what="the RayJob")
    eventually(lambda: kube.exists("rbac.authorization.k8s.io", "v1", "roles", ns, f"loka-run-{RUN}"), what="Role")

    eventually(lambda: secret_names(kube, ns) >= {f"loka-run-{RUN}-ray-token"}, what="the run's Ray token")

    kube.delete_run(ns, RUN)
    # KubeRay's RayJob finalizer still finds the Ray token it needs to stop the job, so the RayJob goes.
    eventually(lambda: kube.rayjob(ns, RUN) is None, timeout=90, what="the RayJob to be garbage-collected")
    for group, plural in (("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles")):
        eventually(
            lambda g=group, p=plural: not kube.exists(g, "v1", p, ns, f"loka-run-{RUN}"),
            timeout=60,
            what=f"{plural} to be garbage-collected",
        )
    policies = client.NetworkingV1Api(kube.api)
    eventually(lambda: not policies.list_namespaced_network_policy(ns).items, timeout=60, what="the NetworkPolicy gone")
    eventually(lambda: f"loka-run-{RUN}-ray-token" not in secret_names(kube, ns), timeout=60, what="the token gone")


def secret_names(kube: Kube, ns: str) -> set[str]:
    return {s.metadata.name for s in kube.core.list_namespaced_secret(ns).items}


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: LocalCluster, operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    names = [f"run-{i}" for i in range(8)]
    small = {
        "workers": 1,
        "gpusPerWorker": 1,
        "head": {"cpu": "1", "memory": "1Gi"},
        "worker": {"cpu": "1", "memory": "1Gi"},
    }
    for name in names:
        kube.create_run(run_manifest(name, ns, resources=small))
    # Kill as soon as the first child appears: the others are mid-flight.
    eventually(lambda: kube.rayjobs(ns), timeout=30, what="the first RayJob")
    operator.kill()
    operator.start()

    for name in names:
        wait_phase(kube, ns, name, "Running", timeout=180)
    rayjobs = kube.rayjobs(ns)
    assert sorted(r["metadata"]["name"] for r in rayjobs) == names
    for rayjob in rayjobs:
        assert len(rayjob["metadata"]["ownerReferences"]) == 1
    accounts = [sa.metadata.name for sa in kube.core.list_namespaced_service_account(ns).items]
    assert sorted(a for a in accounts if a.startswith("loka-run-")) == sorted(f"loka-run-{n}" for n in names)
    clusters = kube.list("ray.io", "v1", "rayclusters", ns)
    assert len(clusters) == len(names)
    for name in names:
        assert kube.status(ns, name)["attempt"] == 1


def test_metrics_count_reconciles_and_phases(operator: OperatorProcess, kube: Kube, ns: str) -> None:
    kube.create_run(run_manifest(RUN, ns))
    wait_phase(kube, ns, RUN, "Running")
    text = operator.metrics()
    assert 'loka_reconcile_total{result="success"}' in text
    assert "loka_reconcile_duration_seconds_bucket" in text
    assert 'loka_runs{phase="Running"}' in text
    assert 'loka_api_requests_total{verb="POST"}' in text


def test_gpu_smoke_example_is_admitted_on_one_gpu_with_inputs_the_trainer_builds(
    operator: OperatorProcess, kube: Kube, ns: str, gpu_queue: str
) -> None:
    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "gpu-smoke-run.yaml").read_text())
    manifest["metadata"]["namespace"] = ns
    manifest["spec"].update(queued(gpu_queue))
    # Only the checkpoints need S3: its Secret is the one thing an admin creates besides the run.
    secret = {"metadata": {"name": "loka-s3"}, "stringData": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}
    kube.core.create_namespaced_secret(ns, secret)
    kube.create_run(manifest)

    name = manifest["metadata"]["name"]
    status = wait_phase(kube, ns, name, "Running")
    assert status["attempt"] == 1
    rayjob = kube.rayjob(ns, name) or {}
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 1
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
