"""The local control plane behaves like a real cluster: each test goes through the API."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from localcluster.controlplane import S3_BUCKET, ClusterError, LocalCluster, wait_until
from localcluster.versions import load_versions

RAY = ("ray.io", "v1")
KUEUE = ("kueue.x-k8s.io", "v1beta2")


def eventually(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll the API until `predicate` returns something truthy; return it."""
    result: list[Any] = []

    def check() -> bool:
        value = predicate()
        result[:] = [value]
        return bool(value)

    try:
        wait_until(check, timeout=timeout, what=what)
    except ClusterError as err:
        raise AssertionError(f"{err}; last seen: {result[0] if result else None!r}") from None
    return result[0]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_apiserver_is_ready_and_serves_the_pinned_version(cluster: LocalCluster, k8s: Any) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    version = client.VersionApi(k8s).get_code()
    assert version.git_version == load_versions()["kubernetes"].version


def test_a_serviceaccount_without_a_role_is_forbidden(cluster: LocalCluster, k8s: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": "nobody"}))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec={"audiences": [], "expirationSeconds": 600})
    ).status.token

    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.layout.pki.ca_crt)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(configuration) as as_nobody:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_nobody).list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in str(denied.value.body)
        # The same token is authenticated (not 401) as the ServiceAccount: only authorization says no.
        review: Any = client.AuthenticationV1Api(as_nobody).create_self_subject_review(
            client.V1SelfSubjectReview(metadata={})
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"


def _as_service_account(cluster: LocalCluster, core: Any, namespace: str, name: str) -> client.ApiClient:
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": name}))
    token = core.create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec={"audiences": [], "expirationSeconds": 600})
    ).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.layout.pki.ca_crt)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def test_setting_block_owner_deletion_needs_update_on_the_owners_finalizers(
    cluster: LocalCluster, k8s: Any, namespace: str
) -> None:
    """OwnerReferencesPermissionEnforcement, as OpenShift runs it: RBAC on the child is not enough."""
    core: Any = client.CoreV1Api(k8s)
    rbac: Any = client.RbacAuthorizationV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "maker"}, "rules": rules})
    subject = {"kind": "ServiceAccount", "name": "maker", "namespace": namespace}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "maker"}
    binding = {"metadata": {"name": "maker"}, "roleRef": role_ref, "subjects": [subject]}
    rbac.create_namespaced_role_binding(namespace, binding)
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    child = {"metadata": {"name": "child", "ownerReferences": [{**reference, "blockOwnerDeletion": True}]}}

    with _as_service_account(cluster, core, namespace, "maker") as maker:
        as_maker: Any = client.CoreV1Api(maker)
        with pytest.raises(ApiException) as refused:
            as_maker.create_namespaced_config_map(namespace, child)
        assert refused.value.status == 403
        assert "cannot set blockOwnerDeletion" in str(refused.value.body)
        # Without blockOwnerDeletion, or with update on the owner's finalizers, the create goes through.
        loose = {"metadata": {"name": "loose", "ownerReferences": [reference]}}
        as_maker.create_namespaced_config_map(namespace, loose)
        rules.append({"apiGroups": [""], "resources": ["configmaps/finalizers"], "verbs": ["update"]})
        rbac.replace_namespaced_role("maker", namespace, {"metadata": {"name": "maker"}, "rules": rules})
        wait_until(lambda: _created(as_maker, namespace, child), timeout=30, what="the grant to take effect")


def _created(core: Any, namespace: str, body: dict[str, Any]) -> bool:
    try:
        core.create_namespaced_config_map(namespace, body)
    except ApiException as error:
        if error.status == 403:
            return False
        raise
    return True


def test_pods_are_admitted_by_the_plugins_managed_clusters_add(k8s: Any, namespace: str) -> None:
    """ExtendedResourceToleration (EKS), PodNodeSelector and PodTolerationRestriction (OpenShift) shape pods."""
    core: Any = client.CoreV1Api(k8s)
    annotations = {
        "scheduler.alpha.kubernetes.io/node-selector": "loka.dev/pool=gpu",
        "scheduler.alpha.kubernetes.io/defaultTolerations": '[{"key": "team", "operator": "Exists"}]',
    }
    core.patch_namespace(namespace, {"metadata": {"annotations": annotations}})
    gpu = {"nvidia.com/gpu": "1"}
    pod = {
        "metadata": {"name": "gpu"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": gpu, "limits": gpu}}]},
    }
    admitted = core.create_namespaced_pod(namespace, pod, dry_run="All")
    tolerations = {(t.key, t.operator, t.effect) for t in admitted.spec.tolerations}
    assert ("nvidia.com/gpu", "Exists", "NoSchedule") in tolerations  # ExtendedResourceToleration
    assert ("team", "Exists", None) in tolerations  # PodTolerationRestriction: the namespace's defaults
    assert admitted.spec.node_selector == {"loka.dev/pool": "gpu"}  # PodNodeSelector: the namespace's selector


def ray_cluster_spec(*, workers: int, gpus: int) -> dict[str, Any]:
    container_security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }

    def pod(resources: dict[str, str], name: str) -> dict[str, Any]:
        return {
            "spec": {
                "containers": [
                    {
                        "name": name,
                        "image": "rayproject/ray:2.46.0",
                        "resources": {"requests": resources, "limits": resources},
                        "securityContext": container_security,
                    }
                ]
            }
        }

    worker_resources = {"cpu": "4", "memory": "16Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "headGroupSpec": {"rayStartParams": {}, "template": pod({"cpu": "1", "memory": "2Gi"}, "ray-head")},
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": {},
                "template": pod(worker_resources, "ray-worker"),
            }
        ],
    }


def test_kuberay_raycluster_pods_run_on_kwok_nodes_with_gpus_on_gpu_nodes(
    cluster: LocalCluster, k8s: Any, namespace: str
) -> None:
    custom: Any = client.CustomObjectsApi(k8s)
    core: Any = client.CoreV1Api(k8s)
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "rc"},
        "spec": ray_cluster_spec(workers=2, gpus=8),
    }
    custom.create_namespaced_custom_object(*RAY, namespace, "rayclusters", body)

    def running_pods() -> list[Any]:
        pods = core.list_namespaced_pod(namespace, label_selector="ray.io/cluster=rc").items
        return pods if len(pods) == 3 and all(p.status.phase == "Running" for p in pods) else []

    pods = eventually(running_pods, timeout=120, what="KubeRay's head and 2 worker pods to be Running")
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        node = nodes[pod.spec.node_name]
        assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"
        if pod.metadata.labels["ray.io/node-type"] == "worker":
            assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    workers = [p for p in pods if p.metadata.labels["ray.io/node-type"] == "worker"]
    assert len({p.spec.node_name for p in workers}) == 2, "8 GPUs each: the two workers need two GPU nodes"

    def provisioned() -> dict[str, Any] | None:
        rc = custom.get_namespaced_custom_object(*RAY, namespace, "rayclusters", "rc")
        ok = all((condition(rc, c) or {}).get("status") == "True" for c in ("HeadPodReady", "RayClusterProvisioned"))
        return rc if ok else None

    rc = eventually(provisioned, timeout=120, what="RayCluster conditions HeadPodReady and RayClusterProvisioned")
    assert rc["status"]["state"] == "ready"


@pytest.fixture
def gpu_queue(k8s: Any, namespace: str) -> Iterator[str]:
    """A ResourceFlavor and a ClusterQueue with a quota of 8 GPUs, and a LocalQueue in the namespace."""
    custom: Any = client.CustomObjectsApi(k8s)
    flavor, cq = f"{namespace}-flavor", f"{namespace}-cq"
    custom.create_cluster_custom_object(
        *KUEUE,
        "resourceflavors",
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
    )
    quota = [
        {"name": "cpu", "nominalQuota": "100"},
        {"name": "memory", "nominalQuota": "1Ti"},
        {"name": "nvidia.com/gpu", "nominalQuota": "8"},
    ]
    custom.create_cluster_custom_object(
        *KUEUE,
        "clusterqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [{"name": flavor, "resources": quota}],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        *KUEUE, namespace, "localqueues",
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team"},
         "spec": {"clusterQueue": cq}},
    )  # fmt: skip
    yield "team"
    for plural, name in (("clusterqueues", cq), ("resourceflavors", flavor)):
        try:
            custom.delete_cluster_custom_object(*KUEUE, plural, name)
        except ApiException as err:
            if err.status != 404:
                raise


def rayjob(name: str, queue: str) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue}},
        "spec": {
            "entrypoint": "python -c 'print(1)'",
            # Interactive: KubeRay keeps the cluster up without submitting, so only Kueue decides.
            "submissionMode": "InteractiveMode",
            "shutdownAfterJobFinishes": True,
            "rayClusterSpec": ray_cluster_spec(workers=1, gpus=8),
        },
    }


def test_kueue_admits_one_8_gpu_rayjob_and_queues_the_next_until_quota_frees(
    cluster: LocalCluster, k8s: Any, namespace: str, gpu_queue: str
) -> None:
    custom: Any = client.CustomObjectsApi(k8s)
    custom.create_namespaced_custom_object(*RAY, namespace, "rayjobs", rayjob("first", gpu_queue))

    def workload_for(job: str) -> dict[str, Any] | None:
        items = custom.list_namespaced_custom_object(*KUEUE, namespace, "workloads")["items"]
        owned = [w for w in items if any(o["name"] == job for o in w["metadata"].get("ownerReferences", []))]
        return owned[0] if owned else None

    def admitted(job: str) -> dict[str, Any] | None:
        workload = workload_for(job)
        return workload if workload and (condition(workload, "Admitted") or {}).get("status") == "True" else None

    def ray_clusters_of(job: str) -> list[str]:
        """RayCluster objects KubeRay created for the job. Not `status.rayClusterName`: KubeRay writes that name
        for every new RayJob, suspended or not, and clears it only once the suspend cycle reaches Suspended."""
        items = custom.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"]
        return [
            rc["metadata"]["name"]
            for rc in items
            if any(o["kind"] == "RayJob" and o["name"] == job for o in rc["metadata"].get("ownerReferences", []))
        ]

    def running(job: str) -> bool:
        """Admitted, unsuspended by Kueue (KubeRay omits `suspend: false`), and given its RayCluster by KubeRay."""
        if not admitted(job):
            return False
        current = custom.get_namespaced_custom_object(*RAY, namespace, "rayjobs", job)
        return current["spec"].get("suspend") is not True and bool(ray_clusters_of(job))

    eventually(lambda: running("first"), timeout=90, what="the first RayJob to be admitted and get its RayCluster")

    custom.create_namespaced_custom_object(*RAY, namespace, "rayjobs", rayjob("second", gpu_queue))

    def pending_on_quota() -> dict[str, Any] | None:
        workload = workload_for("second")
        reserved = condition(workload, "QuotaReserved") if workload else None
        if reserved and reserved["status"] == "False" and reserved.get("reason") == "Pending":
            return reserved
        return None

    reason = eventually(pending_on_quota, timeout=60, what="the second Workload to be pending on quota")
    assert "nvidia.com/gpu" in reason["message"], reason["message"]

    # KubeRay settles a RayJob created suspended in Suspended; until then it may read Initializing or
    # Suspending with a reserved cluster name. What is deterministic: Kueue keeps it suspended and no
    # RayCluster is ever created for it.
    def suspended(job: str) -> dict[str, Any] | None:
        current: dict[str, Any] = custom.get_namespaced_custom_object(*RAY, namespace, "rayjobs", job)
        return current if current.get("status", {}).get("jobDeploymentStatus") == "Suspended" else None

    settled = eventually(lambda: suspended("second"), timeout=60, what="KubeRay to settle the held RayJob")
    assert settled["spec"]["suspend"] is True
    assert not admitted("second")
    assert ray_clusters_of("second") == []

    custom.delete_namespaced_custom_object(*RAY, namespace, "rayjobs", "first")
    eventually(lambda: running("second"), timeout=120, what="the second RayJob to be admitted once quota frees")


def test_a_rayjob_created_suspended_reserves_a_cluster_name_but_never_creates_the_cluster(
    cluster: LocalCluster, k8s: Any, namespace: str
) -> None:
    """Pins the KubeRay behaviour the operator's status reads around: a held RayJob passes through
    Initializing and Suspending carrying a generated rayClusterName, with no RayCluster behind it."""
    custom: Any = client.CustomObjectsApi(k8s)
    body = rayjob("held", "no-queue")
    body["metadata"]["labels"] = {}
    body["spec"]["suspend"] = True
    # Watch from before the create, so every status KubeRay writes is seen in order.
    since = custom.list_namespaced_custom_object(*RAY, namespace, "rayjobs")["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(*RAY, namespace, "rayjobs", body)
    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
    seen: list[tuple[str, str]] = []
    stream = watcher.stream(
        custom.list_namespaced_custom_object, *RAY, namespace, "rayjobs", resource_version=since, timeout_seconds=60
    )
    for event in stream:
        status = event["object"].get("status") or {}
        seen.append((status.get("jobDeploymentStatus") or "", status.get("rayClusterName") or ""))
        if status.get("jobDeploymentStatus") == "Suspended":
            watcher.stop()
    states = [state for state, _ in seen]
    assert states[-1] == "Suspended", seen
    assert seen[-1][1] == "", "KubeRay clears the reserved name once Suspended"
    assert any(name for state, name in seen if state in ("Initializing", "Suspending")), seen
    assert custom.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"] == []


def test_deleting_an_owner_garbage_collects_what_it_owns(cluster: LocalCluster, k8s: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata={"name": "owner"}))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata={"name": "dependent", "ownerReferences": [reference]})
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as err:
            return bool(err.status == 404)
        return False

    eventually(dependent_gone, timeout=60, what="the garbage collector to delete the dependent ConfigMap")


def test_minio_multipart_upload_and_download_round_trip_bytes_identical(cluster: LocalCluster, tmp_path: Any) -> None:
    env = cluster.env
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(23 * 1024 * 1024))
    key = f"test/{uuid.uuid4().hex}/blob.bin"
    transfer = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_file(str(source), S3_BUCKET, key, Config=transfer)
    try:
        etag = s3.head_object(Bucket=S3_BUCKET, Key=key)["ETag"].strip('"')
        assert etag.endswith("-5"), f"expected a 5-part multipart upload, got ETag {etag}"
        target = tmp_path / "back.bin"
        s3.download_file(S3_BUCKET, key, str(target), Config=transfer)
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    finally:
        s3.delete_object(Bucket=S3_BUCKET, Key=key)


def test_cluster_up_again_finds_it_healthy_and_keeps_every_process(cluster: LocalCluster) -> None:
    before = {name: pid for name, pid, _healthy, _log in cluster.status()}
    messages: list[str] = []
    LocalCluster(echo=messages.append).up()
    assert messages == [f"local control plane already up and healthy ({cluster.server})"]
    assert {name: pid for name, pid, _healthy, _log in cluster.status()} == before
    assert all(pid for pid in before.values())


@pytest.mark.cluster
def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Any) -> None:
    local = LocalCluster(tmp_path / "broken")
    component = local.component("etcd")
    component.args = ["--no-such-flag"]
    component.health = lambda: False  # the running cluster's etcd answers on the same port
    component.ports = ()  # ...and holds it: this test is about a process that exits
    component.layout.logs.mkdir(parents=True)
    component.layout.pids.mkdir(parents=True)
    component.start()
    with pytest.raises(ClusterError) as failure:
        component.wait_healthy()
    assert "etcd exited during startup" in str(failure.value)
    assert "no-such-flag" in str(failure.value), "the log tail explains why"


@pytest.mark.cluster
def test_a_component_whose_port_is_taken_says_which_port(tmp_path: Any) -> None:
    local = LocalCluster(tmp_path / "other-checkout")
    component = local.component("etcd")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        component.ports = (squatter.getsockname()[1],)
        component.port_grace = 1.0
        with pytest.raises(ClusterError) as refused:
            component.start()
    assert f"port {component.ports[0]} on 127.0.0.1 is taken" in str(refused.value)
    assert f"by pid {os.getpid()}" in str(refused.value), "and by whom"
    assert component.pid() is None, "nothing was started"
