"""``loka-trainer release``: the Ray pods' preStop hook, so that a preemption or a suspension saves first.

When Kueue evicts a run (or a user suspends it) KubeRay deletes the Ray cluster at once, without stopping the
Ray job (kuberay#5004). The kubelet runs each container's preStop hook before its SIGTERM, within the pod's
terminationGracePeriodSeconds (spec.preemption.gracePeriodSeconds):

- on the head, it stops the cluster's running Ray jobs through Ray's job API: Ray sends the trainer SIGTERM
  (the trainer has verl save the step in flight, see ``loka_trainer.stop_handshake``) and waits
  RAY_JOB_STOP_WAIT_TIME_S before SIGKILL; the hook returns when the jobs have ended;
- on a worker (``--wait``), it only waits until the head's jobs have ended: the worker's ranks write and
  upload their shards of that last checkpoint, so the pod must not go before.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

DASHBOARD_PORT = 8265
_POLL_S = 1.0
_ACTIVE = ("PENDING", "RUNNING")


def dashboard_address(environ: dict[str, str] | None = None) -> str:
    """The head's Ray dashboard: this pod on the head, the head's service (KubeRay's FQ_RAY_IP) on a worker."""
    env = dict(os.environ) if environ is None else environ
    host = env.get("FQ_RAY_IP") or env.get("RAY_IP") or "127.0.0.1"
    return f"http://{host}:{DASHBOARD_PORT}"


def active_jobs(client: Any) -> list[str]:
    return [job.submission_id for job in client.list_jobs() if str(job.status) in _ACTIVE and job.submission_id]


def release(*, stop: bool, address: str | None = None, timeout_s: float = 3600.0) -> int:
    """Stop (``stop``) the cluster's active Ray jobs gracefully, then wait until none is active. Exit code 0; a
    hook that fails only makes the kubelet go on with SIGTERM, as without it.
    """
    from ray.job_submission import JobSubmissionClient

    started = time.monotonic()
    try:
        client = JobSubmissionClient(address or dashboard_address())
        jobs = active_jobs(client)
        if stop:
            for job in jobs:
                log.info("stopping Ray job %s: the trainer saves the step in flight, then exits", job)
                client.stop_job(job)
        while jobs and time.monotonic() - started < timeout_s:
            time.sleep(_POLL_S)
            jobs = active_jobs(client)
    except Exception as error:  # the dashboard is gone already: nothing left to wait for
        log.warning("release: %s: %s", type(error).__name__, error)
        return 0
    log.info("released after %.1f s (%s)", time.monotonic() - started, "jobs still active" if jobs else "no job left")
    return 0
