"""A thin test-side wrapper over the official client for the objects these tests read and write."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loka_api import kinds
from loka_api.kinds import Kind

RUNS = kinds.TRAINING_RUN


class Kube:
    def __init__(self, api: Any) -> None:
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self.batch: Any = client.BatchV1Api(api)

    def as_user(self, user: str) -> Kube:
        """The same cluster, every call made as `user` (the admin impersonates it: RBAC applies as to that user)."""
        api = client.ApiClient(self.api.configuration)
        api.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
        return Kube(api)

    # ------------------------------------------------------------------------ runs

    def create_run(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = {"apiVersion": RUNS.api_version, "kind": RUNS.kind, **manifest}
        ns = manifest["metadata"]["namespace"]
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            RUNS.group, RUNS.version, ns, RUNS.plural, manifest
        )
        return created

    def run(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(*RUNS.gvr, ns, name)

    def status(self, ns: str, name: str) -> dict[str, Any]:
        body = self.run(ns, name) or {}
        status: dict[str, Any] = body.get("status") or {}
        return status

    def phase(self, ns: str, name: str) -> str | None:
        phase: str | None = self.status(ns, name).get("phase")
        return phase

    def condition(self, ns: str, name: str, type_: str) -> dict[str, Any]:
        for cond in self.status(ns, name).get("conditions", []):
            if cond["type"] == type_:
                found: dict[str, Any] = cond
                return found
        return {}

    def patch_run(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(RUNS.group, RUNS.version, ns, RUNS.plural, name, {"spec": spec})

    def patch_run_status(self, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.custom.patch_namespaced_custom_object_status(
            RUNS.group, RUNS.version, ns, RUNS.plural, name, {"status": status}
        )
        return patched

    def delete_run(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(RUNS.group, RUNS.version, ns, RUNS.plural, name)

    # ------------------------------------------------------------------ children

    def rayjob(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(*kinds.RAY_JOB.gvr, ns, name)

    def rayjobs(self, ns: str) -> list[dict[str, Any]]:
        return self.list(*kinds.RAY_JOB.gvr, ns)

    def workloads(self, ns: str) -> list[dict[str, Any]]:
        return self.list(*kinds.WORKLOAD.gvr, ns)

    def pods(self, ns: str, selector: str = "") -> list[Any]:
        items: list[Any] = self.core.list_namespaced_pod(ns, label_selector=selector).items
        return items

    def events(self, ns: str, name: str, kind: str = "TrainingRun") -> list[Any]:
        """The Events `kubectl describe` shows for one object: the RayJob and the RayCluster share the run's name and
        KubeRay posts its own Warnings on them, so the kind is part of the selector."""
        selector = f"involvedObject.name={name},involvedObject.kind={kind}"
        items: list[Any] = self.core.list_namespaced_event(ns, field_selector=selector).items
        return items

    # -------------------------------------------------------------------- generic

    def get(self, group: str, version: str, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        try:
            if (group, version, plural) == kinds.SERVICE_ACCOUNT.gvr:
                return dict(self.core.read_namespaced_service_account(name, ns).to_dict())
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(group, version, ns, plural, name)
            return found
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def exists(self, group: str, version: str, plural: str, ns: str, name: str) -> bool:
        if group == kinds.ROLE.group:
            reader = (
                self.rbac.read_namespaced_role
                if plural == kinds.ROLE.plural
                else self.rbac.read_namespaced_role_binding
            )
            try:
                reader(name, ns)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            return True
        return self.get(group, version, plural, ns, name) is not None

    def list(self, group: str, version: str, plural: str, ns: str) -> list[dict[str, Any]]:
        answer = self.custom.list_namespaced_custom_object(group, version, ns, plural)
        items: list[dict[str, Any]] = answer.get("items", [])
        return items

    def create_cluster_object(self, kind: Kind, body: dict[str, Any]) -> None:
        body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
        self.custom.create_cluster_custom_object(*kind.gvr, body)

    def delete_cluster_object(self, kind: Kind, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(*kind.gvr, name)
        except ApiException as error:
            if error.status != 404:
                raise
