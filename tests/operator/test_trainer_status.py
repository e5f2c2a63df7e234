"""What the trainer can write never drives a destructive decision, and what KubeRay writes is kept short and clean."""

from __future__ import annotations

import base64
import uuid

import pytest
from kubernetes.client.exceptions import ApiException

from localcluster.operator_process import OperatorProcess
from tests.operator.conftest import drive_rayjob, eventually, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "qwen"


def test_a_trainer_forging_a_finished_phase_never_deletes_the_rayjob(
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    kube.create_run(run_manifest(RUN, ns, ttlSecondsAfterFinished=1))
    wait_phase(kube, ns, RUN, "Running")
    trainer = kube.as_user(f"system:serviceaccount:{ns}:loka-run-{RUN}")
    forgery = {"phase": "Succeeded", "completionTime": "2000-01-01T00:00:00Z"}

    # The trainer-status admission policy refuses the run's own account a field the operator writes ...
    with pytest.raises(ApiException) as refused:
        trainer.patch_run_status(ns, RUN, forgery)
    assert refused.value.status == 403 and "status.phase is written by the Loka operator only" in str(
        refused.value.body
    )
    # ... and where it is not installed (trainerStatusPolicy.create=false) the per-run Role alone lets any status
    # field through: a forged phase lands, and the operator must not act on it.
    forged = kube.patch_run_status(ns, RUN, forgery)
    assert forged["status"]["phase"] == "Succeeded"

    # The operator puts its own field back from the RayJob, which is still running, and keeps the RayJob.
    wait_phase(kube, ns, RUN, "Running")
    assert kube.rayjob(ns, RUN) is not None
    assert "completionTime" not in kube.status(ns, RUN)

    # The TTL still applies when the RayJob itself finishes.
    drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
    eventually(lambda: kube.rayjob(ns, RUN) is None, timeout=60, what="the RayJob to be removed after its TTL")


def test_kuberays_driver_log_reaches_status_and_events_as_one_redacted_line(
    operator: OperatorProcess, kube: Kube, ns: str
) -> None:
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    data = {"AWS_ACCESS_KEY_ID": "bG9rYQ==", "AWS_SECRET_ACCESS_KEY": base64.b64encode(secret_value.encode()).decode()}
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "data": data})
    storage = {"endpoint": "http://127.0.0.1:9000", "credentialsSecret": "s3"}
    kube.create_run(run_manifest(RUN, ns, storage=storage))
    wait_phase(kube, ns, RUN, "Running")

    # What KubeRay copies from a failed driver: its whole log, credentials printed by a careless library included.
    first = f"job failed: botocore saw AWS_SECRET_ACCESS_KEY={secret_value} " + "driver output " * 1500
    log = first + "\nTraceback (most recent call last):\n" + f"  secret again: {secret_value}\n" * 300
    assert len(log) > 20_000
    drive_rayjob(kube, ns, RUN, "Failed", "FAILED", message=log)
    wait_phase(kube, ns, RUN, "Failed")

    failed = kube.condition(ns, RUN, "Failed")
    events: list[str] = eventually(
        lambda: [e.message for e in kube.events(ns, RUN) if e.reason == "Failed"], what="the Failed Event"
    )
    for text in [failed["message"], kube.status(ns, RUN)["message"], *events]:
        assert text.startswith("job failed: botocore saw AWS_SECRET_ACCESS_KEY=[redacted]")
        assert "\n" not in text
        assert len(text.encode()) <= 1024
        assert secret_value not in text
    assert secret_value not in str(kube.run(ns, RUN))
