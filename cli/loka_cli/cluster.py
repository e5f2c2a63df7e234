"""The API server, as kubectl reaches it: the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) or
the in-cluster identity, ``--context``, and ``--namespace`` (else the context's namespace, else ``default``).

The ``kubernetes`` client is imported here only, on first use, so that ``loka --help`` and the offline commands
start fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loka_api import GROUP, PLURAL, VERSION
from loka_cli.errors import EXIT_CLUSTER, CliError, not_found

JSON = dict[str, Any]
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
FIELD_MANAGER = "loka"


@dataclass
class Cluster:
    """One connection: the API client, the namespace commands default to, and who we are (for error hints)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace_flag: str | None = None
    _api: Any = field(default=None, init=False, repr=False)
    _namespace: str = field(default="default", init=False)
    server: str = field(default="", init=False)
    context_name: str = field(default="", init=False)

    # ------------------------------------------------------------------------------ connecting

    @property
    def api(self) -> Any:
        if self._api is None:
            self._connect()
        return self._api

    @property
    def namespace(self) -> str:
        if self._api is None:
            self._connect()
        return self._namespace

    def _connect(self) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            contexts, active = config.list_kube_config_contexts(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        except (ConfigException, FileNotFoundError, TypeError):
            contexts, active = [], None
        if contexts or self.kubeconfig or self.context:
            chosen = next((c for c in contexts if c["name"] == self.context), None) if self.context else active
            if self.context and chosen is None:
                names = ", ".join(sorted(c["name"] for c in contexts)) or "none"
                raise CliError(
                    f"--context: no context {self.context!r} in the kubeconfig",
                    hint=f"contexts there: {names} (kubectl config get-contexts)",
                    code=EXIT_CLUSTER,
                )
            try:
                self._api = config.new_client_from_config(config_file=self.kubeconfig, context=self.context)  # type: ignore[no-untyped-call]
            except ConfigException as error:
                raise CliError(f"cannot use the kubeconfig: {error}", code=EXIT_CLUSTER) from error
            self.context_name = (chosen or {}).get("name", "")
            context_ns = ((chosen or {}).get("context") or {}).get("namespace")
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except ConfigException as error:
                raise CliError(
                    "no kubeconfig found and not running in a pod",
                    hint="set KUBECONFIG or pass --kubeconfig (for the local cluster: source .cluster/env)",
                    code=EXIT_CLUSTER,
                ) from error
            self._api = client.ApiClient()
            self.context_name = "in-cluster"
            context_ns = None
        self.server = self._api.configuration.host
        self._namespace = self.namespace_flag or context_ns or "default"

    def close(self) -> None:
        if self._api is not None:
            self._api.close()

    # ------------------------------------------------------------------------------ errors

    def explain(self, error: Exception, what: str) -> CliError:
        """An API or connection error as a CliError that says what to do."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = f"{self.server} (context {self.context_name or 'default'})"
        if isinstance(error, ApiException):
            reason = _api_message(error)
            if error.status == 404:
                return not_found(f"{what}: not found", hint=reason or None)
            if error.status == 403:
                return CliError(
                    f"{what}: forbidden: {reason}",
                    hint="ask a cluster admin for access, or pick another namespace with -n",
                    code=EXIT_CLUSTER,
                )
            if error.status == 401:
                return CliError(
                    f"{what}: the API server at {where} did not accept your credentials",
                    hint="log in again (your token may have expired), then retry",
                    code=EXIT_CLUSTER,
                )
            if error.status in (400, 409, 422):
                return CliError(f"{what}: {reason}", code=2)
            return CliError(f"{what}: {error.status} {reason}", code=EXIT_CLUSTER)
        if isinstance(error, HTTPError | OSError):
            return CliError(
                f"{what}: cannot reach the API server at {where}",
                hint="is the cluster up? check with `kubectl cluster-info`"
                + ("" if self.context else ", or choose a context with --context"),
                code=EXIT_CLUSTER,
            )
        return CliError(f"{what}: {error}", code=EXIT_CLUSTER)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except (ApiException, HTTPError, OSError) as error:
            raise self.explain(error, what) from error

    # ------------------------------------------------------------------------------ clients

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    # ------------------------------------------------------------------------------ TrainingRuns

    def get_run(self, name: str, namespace: str | None = None) -> JSON:
        ns = namespace or self.namespace
        from kubernetes.client.exceptions import ApiException

        try:
            run: JSON = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                raise not_found(
                    f"no TrainingRun {name!r} in namespace {ns!r}",
                    hint=f"list the runs there with `loka status -n {ns}` (or every namespace with -A)",
                ) from error
            raise self.explain(error, f"reading TrainingRun {ns}/{name}") from error
        except Exception as error:
            raise self.explain(error, f"reading TrainingRun {ns}/{name}") from error
        return run

    def list_runs(self, *, all_namespaces: bool = False) -> list[JSON]:
        if all_namespaces:
            answer = self.call("listing TrainingRuns", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            answer = self.call(
                f"listing TrainingRuns in {self.namespace!r}",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
            )
        items: list[JSON] = answer.get("items", [])
        return sorted(items, key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"]))

    def apply_run(self, manifest: JSON, *, force: bool = False, dry_run: bool = False) -> JSON:
        """Server-side apply, as `kubectl apply --server-side` (field manager `loka`)."""
        meta = manifest["metadata"]
        extra: JSON = {"dry_run": "All"} if dry_run else {}
        # Read the answer ourselves: the generated client maps only 200, and an apply that creates answers 201.
        response = self.call(
            f"applying TrainingRun {meta['namespace']}/{meta['name']}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=force,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
            **extra,
        )
        applied: JSON = json.loads(response.data)
        return applied

    def patch_run(self, name: str, patch: JSON) -> JSON:
        patched: JSON = self.call(
            f"patching TrainingRun {self.namespace}/{name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        return patched

    def delete_run(self, name: str) -> None:
        self.call(
            f"deleting TrainingRun {self.namespace}/{name}",
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            propagation_policy="Background",
        )

    def watch_run(self, name: str, *, timeout: float) -> Iterator[JSON]:
        """The run now, then each time it changes, until ``timeout`` seconds passed (reconnecting as needed)."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        run = self.get_run(name)
        yield run
        version = run["metadata"]["resourceVersion"]
        while time.monotonic() < deadline:
            left = max(1, int(deadline - time.monotonic()))
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=min(left, 60),
                ):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        raise not_found(f"TrainingRun {self.namespace}/{name} was deleted")
                    yield obj
            except CliError:
                raise
            except Exception as error:
                from kubernetes.client.exceptions import ApiException

                if isinstance(error, ApiException) and error.status == 410:  # too old: start from a fresh read
                    run = self.get_run(name)
                    version = run["metadata"]["resourceVersion"]
                    yield run
                    continue
                raise self.explain(error, f"watching TrainingRun {self.namespace}/{name}") from error
            finally:
                stream.stop()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------------------ children

    def get_rayjob(self, name: str) -> JSON | None:
        return self._get_custom(RAY_GROUP, RAY_VERSION, "rayjobs", name)

    def get_raycluster(self, name: str) -> JSON | None:
        return self._get_custom(RAY_GROUP, RAY_VERSION, "rayclusters", name)

    def _get_custom(self, group: str, version: str, plural: str, name: str) -> JSON | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found: JSON = self.custom.get_namespaced_custom_object(group, version, self.namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise self.explain(error, f"reading {plural} {self.namespace}/{name}") from error
        except Exception as error:
            raise self.explain(error, f"reading {plural} {self.namespace}/{name}") from error
        return found

    def list_custom(self, group: str, version: str, plural: str, *, label_selector: str = "") -> list[JSON]:
        answer = self.call(
            f"listing {plural} in {self.namespace!r}",
            self.custom.list_namespaced_custom_object,
            group,
            version,
            self.namespace,
            plural,
            label_selector=label_selector,
        )
        items: list[JSON] = answer.get("items", [])
        return items

    def pods(self, label_selector: str) -> list[Any]:
        answer = self.call(
            f"listing pods in {self.namespace!r}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=label_selector,
        )
        return list(answer.items)


def _api_message(error: Any) -> str:
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return str(error.reason or "")
    return str(body.get("message") or error.reason or "")
