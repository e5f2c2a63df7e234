"""The API server, as kubectl reaches it: the kubeconfig (``kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) or
the in-cluster identity, a ``context``, and a ``namespace`` (else the context's namespace, else ``default``).

The ``kubernetes`` client is imported here only, on first use, so that importing the library (and ``loka --help``)
stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from loka_client.errors import ClusterError, InvalidRunError, LokaError, NotFoundError


class Connection:
    """One API client, the namespace calls default to, and where it points (for error messages)."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        api_client: Any = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace_flag = namespace
        self._api: Any = api_client
        self._namespace = namespace or "default"
        self.context_name = "" if api_client is None else "given"
        self.server = "" if api_client is None else api_client.configuration.host

    # ------------------------------------------------------------------------------ connecting

    @property
    def api(self) -> Any:
        """The ``kubernetes.client.ApiClient`` (connected on first use)."""
        if self._api is None:
            self._connect()
        return self._api

    @property
    def namespace(self) -> str:
        """The namespace calls default to: the one asked for, else the context's, else ``default``."""
        if self._api is None:
            self._connect()
        return self._namespace

    def use_namespace(self, namespace: str) -> None:
        self.namespace_flag = self._namespace = namespace

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
                raise ClusterError(
                    f"--context: no context {self.context!r} in the kubeconfig",
                    hint=f"contexts there: {names} (kubectl config get-contexts)",
                )
            try:
                self._api = config.new_client_from_config(config_file=self.kubeconfig, context=self.context)  # type: ignore[no-untyped-call]
            except ConfigException as error:
                raise ClusterError(f"cannot use the kubeconfig: {error}") from error
            self.context_name = (chosen or {}).get("name", "")
            context_ns = ((chosen or {}).get("context") or {}).get("namespace")
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except ConfigException as error:
                raise ClusterError(
                    "no kubeconfig found and not running in a pod",
                    hint="set KUBECONFIG or pass --kubeconfig (for the local cluster: source .cluster/env)",
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

    def explain(self, error: Exception, what: str) -> LokaError:
        """An API or connection error as the LokaError that says what to do."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = f"{self.server} (context {self.context_name or 'default'})"
        if isinstance(error, ApiException):
            reason = api_message(error)
            if error.status == 404:
                return NotFoundError(f"{what}: not found", hint=reason or None)
            if error.status == 403:
                return ClusterError(
                    f"{what}: forbidden: {reason}",
                    hint="ask a cluster admin for access, or pick another namespace with -n",
                )
            if error.status == 401:
                return ClusterError(
                    f"{what}: the API server at {where} did not accept your credentials",
                    hint="log in again (your token may have expired), then retry",
                )
            if error.status in (400, 409, 422):
                return InvalidRunError(f"{what}: {reason}")
            return ClusterError(f"{what}: {error.status} {reason}")
        if isinstance(error, HTTPError | OSError):
            return ClusterError(
                f"{what}: cannot reach the API server at {where}",
                hint="is the cluster up? check with `kubectl cluster-info`"
                + ("" if self.context else ", or choose a context with --context"),
            )
        return ClusterError(f"{what}: {error}")

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, its API and connection errors explained (``what`` names the operation)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except (ApiException, HTTPError, OSError) as error:
            raise self.explain(error, what) from error

    def call_on(  # noqa: PLR0917 - the target, then the call and its arguments as the API client takes them
        self,
        kind: str,
        what: str,
        name: str,
        ns: str,
        not_found: Callable[[str, str], LokaError],
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """``fn(*args, **kwargs)`` on the ``kind`` object ``ns/name`` (``name`` empty for a create or apply): a 404
        of a named object is ``not_found(name, ns)``; any other error is explained, naming the operation."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as error:
            if error.status == 404 and name:
                raise not_found(name, ns) from error
            raise self.explain(error, f"{what} {kind} {ns}/{name}".rstrip("/")) from error
        except LokaError:
            raise
        except Exception as error:
            raise self.explain(error, f"{what} {kind} {ns}/{name}".rstrip("/")) from error

    # ------------------------------------------------------------------------------ API groups

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)


def api_message(error: Any) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    try:
        body = json.loads(error.body or "{}")
    except (ValueError, TypeError):
        return str(error.reason or "")
    return str(body.get("message") or error.reason or "")
