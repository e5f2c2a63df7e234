"""The trainer's view of its own TrainingRun: who it is (env), how it reaches the API, read the spec, patch status.

The operator's per-run Role allows exactly ``get`` on this run and ``patch`` on its ``trainingruns/status``.
Every call is bounded (``API_TIMEOUT``): a hung API server must not hold the trainer past its stop budget.
Status patches of an attempt are conditional on ``status.attempt`` still being that attempt (a JSON patch whose
first operation is a ``test``): once the operator counts a newer attempt, the API server refuses the old one's
late patches atomically.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from loka_api import GROUP, PLURAL, VERSION, TrainingRun, TrainingRunStatus
from loka_api.contract import (
    ENV_RAY_CLUSTER_NAME,
    ENV_RUN_NAME,
    ENV_RUN_NAMESPACE,
    FENCING_STATUS_FIELD,
    TRAINER_STATUS_FIELDS,
)
from loka_trainer.status_reporter import StatusFencedError

log = logging.getLogger(__name__)

# (connect, read) seconds for every API call: a status patch must fit in the trainer's stop budget.
API_TIMEOUT = (3.0, 5.0)
# How long a new attempt waits for the operator to show its RayCluster in status before it reports anyway.
ATTEMPT_WAIT_S = 60.0
_UNPROCESSABLE = 422  # a failed JSON patch `test` (and any invalid patch)
# Set by Ray's job supervisor for a job's driver process (ray._private.runtime_env.constants).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class IdentityError(RuntimeError):
    """The trainer was started without knowing which TrainingRun it serves."""


@dataclass(frozen=True)
class RunIdentity:
    name: str
    namespace: str
    # What tells this attempt from the run's others: KubeRay's RayCluster for it and the Ray job it runs as (both
    # new for every attempt; None outside KubeRay and Ray). The operator records both in status.
    ray_cluster: str | None = None
    ray_job: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunIdentity:
        env = os.environ if environ is None else environ
        missing = [var for var in (ENV_RUN_NAME, ENV_RUN_NAMESPACE) if not env.get(var)]
        if missing:
            msg = f"{' and '.join(missing)} must be set to the TrainingRun this trainer serves (the operator sets them)"
            raise IdentityError(msg)
        return cls(
            name=env[ENV_RUN_NAME],
            namespace=env[ENV_RUN_NAMESPACE],
            ray_cluster=env.get(ENV_RAY_CLUSTER_NAME) or None,
            ray_job=_ray_submission_id(env),
        )

    @property
    def holder(self) -> str:
        """What runs this attempt, for its checkpoint writer: the RayCluster, else the Ray job, else this process."""
        return self.ray_cluster or self.ray_job or f"{socket.gethostname()}:{os.getpid()}"

    def attempt_in(self, status: TrainingRunStatus) -> int | None:
        """The attempt number the operator's status gives this trainer; None while status does not show it yet."""
        if self.ray_job is not None:
            for record in status.attempts:
                if record.ray_job_id == self.ray_job:
                    return record.attempt
        if self.ray_cluster is not None and status.ray_cluster == self.ray_cluster:
            return status.attempt
        return None


def _ray_submission_id(env: Mapping[str, str]) -> str | None:
    """The Ray job this process runs as: Ray's job supervisor hands the driver its job config (runtime env and
    metadata, with the submission id KubeRay chose) in this variable.
    """
    raw = env.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        submission = json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return str(submission) if submission else None


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster service account when running in a pod, else ``kubeconfig`` or ``$KUBECONFIG``."""
    configuration = client.Configuration()
    # One retry of a timed-out read, not urllib3's three: every call stays within a few API_TIMEOUTs.
    configuration.retries = 1
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except ConfigException:
            pass
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
    )
    return client.ApiClient(configuration)


def _merged(shown: Any, change: Any) -> Any:
    """``change`` applied to ``shown`` the way a JSON merge patch would (None deletes a key)."""
    if not isinstance(change, dict):
        return change
    base = dict(shown) if isinstance(shown, dict) else {}
    for key, value in change.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = _merged(base.get(key), value)
    return base


class RunClient:
    """Reads one TrainingRun and patches its status subresource, conditionally on the attempt it serves."""

    def __init__(self, api: client.ApiClient, identity: RunIdentity, *, timeout: tuple[float, float] = API_TIMEOUT):
        self.identity = identity
        self.timeout = timeout
        self.attempt: int | None = None  # status.attempt this trainer serves; None: patches are unconditional
        self._objects = client.CustomObjectsApi(api)
        # The trainer's status fields as this attempt last wrote (or first read) them: a JSON patch replaces a
        # whole field, so each patch sends the field merged, as a merge patch would have left it.
        self._shown: dict[str, Any] = {}

    def get(self) -> TrainingRun:
        body = self._objects.get_namespaced_custom_object(
            GROUP, VERSION, self.identity.namespace, PLURAL, self.identity.name, _request_timeout=self.timeout
        )
        return TrainingRun.model_validate(body)

    def serve_attempt(self, *, wait_s: float = ATTEMPT_WAIT_S, poll_s: float = 1.0) -> TrainingRun:
        """Read the run as the operator counts this attempt, and make later status patches conditional on it.

        The operator may not have seen this attempt's RayCluster or Ray job yet: wait (at most ``wait_s``) until
        status shows it, so that the number is this attempt's.
        """
        deadline = time.monotonic() + wait_s
        run = self.get()
        knowable = self.identity.ray_cluster is not None or self.identity.ray_job is not None
        while knowable and self.identity.attempt_in(run.status) is None and time.monotonic() < deadline:
            time.sleep(poll_s)
            run = self.get()
        mine = self.identity.attempt_in(run.status)
        if knowable and mine is None:
            log.warning(
                "status does not show this attempt (RayCluster %s, Ray job %s) after %.0f s: reporting as attempt %s",
                self.identity.ray_cluster,
                self.identity.ray_job,
                wait_s,
                run.status.attempt,
            )
        self.attempt = mine if mine is not None else run.status.attempt
        shown = run.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        self._shown = {key: shown[key] for key in TRAINER_STATUS_FIELDS if key in shown}
        return run

    def patch_status(self, status: dict[str, Any]) -> None:
        """Patch the trainer's fields of ``status`` with merge-patch meaning (keys given replace, keys left out
        stay, ``None`` deletes). Conditional on ``status.attempt`` once ``serve_attempt`` has read it; raises
        StatusFencedError when the operator has counted a newer attempt since.
        """
        if self.attempt is None:
            self._objects.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.identity.namespace,
                PLURAL,
                self.identity.name,
                {"status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
            )
            return
        try:
            self._patch_conditionally(status)
        except ApiException as error:
            if error.status != _UNPROCESSABLE:
                raise
            run = self.get()
            now = run.status.attempt
            if now == self.attempt:
                raise  # the test held: the patch itself was invalid
            if now is not None and self.identity.attempt_in(run.status) == now:
                # The operator counted this attempt only after we read it: the newer number is ours.
                log.info("status.attempt is %s for this attempt now (read %s)", now, self.attempt)
                self.attempt = now
                self._patch_conditionally(status)
                return
            msg = f"status.attempt is {now}, not {self.attempt}: a newer attempt reports the run now"
            raise StatusFencedError(msg) from error

    def _patch_conditionally(self, status: dict[str, Any]) -> None:
        merged = {key: _merged(self._shown.get(key), value) for key, value in status.items()}
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": f"/status/{FENCING_STATUS_FIELD}", "value": self.attempt}
        ]
        operations += [{"op": "add", "path": f"/status/{key}", "value": value} for key, value in merged.items()]
        self._objects.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.identity.namespace,
            PLURAL,
            self.identity.name,
            operations,
            _content_type="application/json-patch+json",
            _request_timeout=self.timeout,
        )
        self._shown.update(merged)
