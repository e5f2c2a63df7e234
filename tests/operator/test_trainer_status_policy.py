"""A run's trainer ServiceAccount may write only the trainer's status fields: the API server itself refuses the rest
(the chart's ValidatingAdmissionPolicy), so code in the trainer container cannot move the attempt fence, pick the
next attempt's input or fake a notification record."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import LocalCluster
from loka_api.contract import TRAINER_STATUS_FIELDS
from tests.operator.conftest import eventually, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "guarded"
SMALL = {
    "workers": 1,
    "gpusPerWorker": 1,
    "head": {"cpu": "1", "memory": "1Gi"},
    "worker": {"cpu": "1", "memory": "1Gi"},
}
OPERATORS_FIELDS: dict[str, Any] = {
    "attempt": 7,
    "source": {"run": "someone-elses", "uid": "0000", "step": 1, "uri": "s3://elsewhere/global_step_1"},
    "notifications": [{"event": "Succeeded", "attempt": 1, "state": "Sent"}],
    "phase": "Succeeded",
}


def as_trainer(cluster: LocalCluster, kube: Kube, ns: str) -> Any:
    """The API as the run's own trainer identity (the ServiceAccount and Role the operator made for it)."""
    account = f"loka-run-{RUN}"
    eventually(lambda: kube.exists("", "v1", "serviceaccounts", ns, account), what="the run's ServiceAccount")
    spec = {"spec": {"audiences": [], "expirationSeconds": 600}}
    token = kube.core.create_namespaced_service_account_token(account, ns, spec).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.layout.pki.ca_crt)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.CustomObjectsApi(client.ApiClient(configuration))


def patch_status(api: Any, ns: str, status: dict[str, Any], *, dry_run: bool = False) -> None:
    extra = {"dry_run": "All"} if dry_run else {}
    api.patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", ns, "trainingruns", RUN, {"status": status}, **extra
    )


def refusal(api: Any, ns: str, status: dict[str, Any], *, dry_run: bool = False) -> str:
    """What the API server said when it refused the patch ("" when it took it)."""
    try:
        patch_status(api, ns, status, dry_run=dry_run)
    except ApiException as error:
        assert error.status in (403, 422), error
        return str(error.body)
    return ""


@pytest.mark.usefixtures("operator")
def test_the_trainer_account_writes_its_own_status_fields_and_nothing_the_operator_owns(
    cluster: LocalCluster, kube: Kube, ns: str
) -> None:
    kube.create_run(run_manifest(RUN, ns, resources=SMALL))
    before = wait_phase(kube, ns, RUN, "Running", timeout=120)
    trainer = as_trainer(cluster, kube, ns)
    # A new policy takes the API server a moment to load: wait for it on a dry run.
    eventually(lambda: refusal(trainer, ns, {"attempt": 7}, dry_run=True), what="the policy to be in force")

    patch_status(trainer, ns, {"progress": {"step": 3, "totalSteps": 10}, "message": "step 3", "wandbURL": "w"})
    for field, value in OPERATORS_FIELDS.items():
        said = refusal(trainer, ns, {field: value, "progress": {"step": 4}})
        assert f"status.{field} is written by the Loka operator only" in said, said
        for allowed in TRAINER_STATUS_FIELDS:
            assert f"status.{allowed}" in said  # the refusal says what the trainer may write

    status = kube.status(ns, RUN)
    assert status["progress"]["step"] == 3  # a refused patch changes nothing, its own fields included
    assert (status["attempt"], status["phase"], status.get("source")) == (before["attempt"], before["phase"], None)
    assert not any(n.get("state") == "Sent" for n in status.get("notifications", []))
