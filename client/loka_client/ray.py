"""A run's Ray cluster seen from outside: its head pod, the trainer's output and the dashboard.

The trainer's output is the Ray job's log, read from Ray's job API on the head pod through a port-forward
(``loka_client.portforward``: the API server's ``pods/portforward`` with the official client's streaming); when the
job API does not answer, the pod's own log (``pods/log``, followed with the client's streaming). The dashboard is
the head pod's dashboard port on a local port.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loka_api.kinds import RAY_JOB, TRAINING_RUN
from loka_api.models import RunPhase, TrainingRunStatus
from loka_api.phases import is_terminal
from loka_client.connection import Connection
from loka_client.errors import LokaError, NotFoundError, RunNotFoundError
from loka_client.portforward import PortForward

DASHBOARD_PORT = 8265
RAY_DONE = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
POLL_SECONDS = 2.0
# How long a follower keeps asking a head pod that does not answer through its port-forward (a kubelet that has
# just started it, or a moment's outage) before it gives up or falls back to the pod's log.
HEAD_ANSWER_WAIT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 20.0

Notice = Callable[[str], None]


class LogsNotFoundError(NotFoundError):
    """There is no log to show: no Ray cluster yet, or the attempt's cluster is gone (and its logs with it)."""


class NoDashboardError(NotFoundError):
    """The run has no running Ray cluster, so no dashboard."""


class RayUnreachableError(LokaError):
    """The head pod's Ray dashboard did not answer through the port-forward."""


class RayJobFailedError(LokaError):
    """A followed Ray job ended without success (``status``: Ray's, or the run's phase)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _RunRay:
    """What one read of the run and its RayJob says about where its Ray job runs."""

    phase: str | None
    attempt: int | None
    attempts: list[tuple[int, str, str | None]]
    rayjob: str
    job_id: str | None
    job_status: str | None  # Ray's status of the job, as KubeRay mirrors it into the RayJob
    ray_cluster: str | None

    @property
    def terminal(self) -> bool:
        return is_terminal(self.phase)


class _Cluster:
    """The few reads this module makes, in one namespace; API errors come out as the client's LokaErrors."""

    def __init__(self, connection: Connection, namespace: str) -> None:
        self.connection, self.namespace = connection, namespace
        self.api = connection.api
        self.core: Any = connection.core

    def _get(self, kind: Any, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found: dict[str, Any] = self.connection.custom.get_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise self.connection.explain(error, f"reading {kind.kind} {self.namespace}/{name}") from error
        except (OSError, LokaError) as error:
            raise self.connection.explain(error, f"reading {kind.kind} {self.namespace}/{name}") from error
        return found

    def run_ray(self, name: str) -> _RunRay:
        run = self._get(TRAINING_RUN, name)
        if run is None:
            raise RunNotFoundError(name, self.namespace)
        status = TrainingRunStatus.model_validate(run.get("status") or {})
        rayjob = self._get(RAY_JOB, status.ray_job or name) or {}
        rj_status = rayjob.get("status") or {}
        return _RunRay(
            rayjob=(rayjob.get("metadata") or {}).get("name") or name,
            phase=status.phase.value if status.phase else None,
            attempt=status.attempt,
            attempts=[(a.attempt, a.ray_job_id, a.ray_cluster) for a in status.attempts],
            job_id=rj_status.get("jobId"),
            job_status=rj_status.get("jobStatus"),
            ray_cluster=rj_status.get("rayClusterName"),
        )

    def pods(self, label_selector: str) -> list[Any]:
        answer = self.connection.call(f"listing pods in {self.namespace!r}", self.core.list_namespaced_pod,
                                      self.namespace, label_selector=label_selector)  # fmt: skip
        return list(answer.items)

    def head_pod(self, ray_cluster: str | None) -> Any | None:
        """The Running head pod of ``ray_cluster`` (KubeRay labels it), if there is one."""
        if not ray_cluster:
            return None
        pods = self.pods(f"ray.io/cluster={ray_cluster},ray.io/node-type=head")
        running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return running[0] if running else None


def _dashboard_port(pod: Any) -> int:
    """The head container's port named ``dashboard`` (KubeRay's default when none is named)."""
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == "dashboard":
                return int(port.container_port)
    return DASHBOARD_PORT


def _which_job(name: str, now: _RunRay, attempt: int | None) -> tuple[int | None, str | None, str | None]:
    """(attempt, Ray job id, Ray cluster) for the attempt asked for (the current one by default)."""
    if attempt is None or attempt == now.attempt:
        return now.attempt, now.job_id, now.ray_cluster
    for number, job_id, ray_cluster in now.attempts:
        if number == attempt:
            return number, job_id, ray_cluster
    recorded = ", ".join(str(number) for number, _, _ in now.attempts) or "none"
    raise LogsNotFoundError(
        f"{name} has no record of attempt {attempt} (current attempt: {now.attempt or 'none yet'})",
        hint=f"attempts with a recorded Ray job: {recorded}",
    )


def logs(
    connection: Connection,
    namespace: str,
    name: str,
    *,
    follow: bool = False,
    attempt: int | None = None,
    notice: Notice | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[str]:
    """The trainer's output of run ``name``, as text chunks; with ``follow``, until the run's Ray job ends.

    Raises LogsNotFoundError when there is nothing to read (no Ray cluster yet, or the attempt's cluster is gone),
    RayUnreachableError when an earlier attempt's Ray cluster does not answer, RayJobFailedError after the last
    chunk of a followed job that did not succeed; the API server's errors as the client's LokaErrors. ``notice``
    hears what is shown instead when Ray's job API does not answer (the pod's own log).
    """
    cluster = _Cluster(connection, namespace)
    now = cluster.run_ray(name)
    number, job_id, ray_cluster = _which_job(name, now, attempt)
    older = attempt is not None and attempt != now.attempt
    pod = cluster.head_pod(now.ray_cluster)
    head = str(pod.metadata.name) if pod is not None else None
    if head is not None and job_id:
        try:
            yield from _RayJobLog(cluster, name, now.ray_cluster, job_id, follow=follow, poll=poll_seconds).chunks()
            return
        except RayUnreachableError as error:
            if older:
                raise RayUnreachableError(f"attempt {attempt}'s Ray job {job_id} could not be read: {error}") from error
            if notice:
                notice(f"Ray's job API on {head} did not answer ({error}); showing pod logs")
        except _JobNotSubmittedError:
            raise LogsNotFoundError(
                f"attempt {number}'s Ray job {job_id} has not been submitted to Ray cluster {ray_cluster} yet "
                "(KubeRay marks the RayJob Running a moment before it submits the job)",
                hint=f"`loka logs {name} -f` waits for the job and follows it",
            ) from None
        except _JobGoneError as gone:
            raise LogsNotFoundError(
                f"attempt {number}'s Ray job {job_id} ran on Ray cluster {ray_cluster or '?'}, which is gone: "
                "KubeRay deletes an attempt's Ray cluster when the attempt ends, and its logs go with it",
                hint=f"the current attempt is {now.attempt}: `loka logs {name}`",
            ) from gone
    elif older:
        raise LogsNotFoundError(
            f"attempt {attempt} ran on Ray cluster {ray_cluster or '?'}, which is gone, and its logs with it",
            hint=f"the current attempt is {now.attempt}: `loka logs {name}`",
        )
    yield from _pod_log(cluster, name, now, head, follow=follow, notice=notice)


class _JobGoneError(Exception):
    pass


class _JobNotSubmittedError(Exception):
    pass


class _RayJobLog:
    """One Ray job's log, read from Ray's job API through a port-forward to its cluster's head pod.

    Followed, it is Ray's own stream of the job's log (``/api/jobs/<id>/logs/tail``, a websocket that Ray closes
    after the job's last line), so nothing is lost when KubeRay releases the Ray cluster the moment the job ends.
    The job's outcome is then asked of Ray, or, once the head pod is gone, of the RayJob KubeRay keeps.

    The head pod is looked up again whenever the port-forward fails: a head pod that does not answer yet, or one
    KubeRay has replaced, is asked again for up to HEAD_ANSWER_WAIT_SECONDS before RayUnreachableError.
    """

    def __init__(
        self, cluster: _Cluster, name: str, ray_cluster: str | None, job_id: str, *, follow: bool, poll: float
    ) -> None:
        self.cluster, self.name, self.ray_cluster, self.job_id = cluster, name, ray_cluster, job_id
        self.follow, self.poll = follow, poll
        self._forward: PortForward | None = None

    def chunks(self) -> Iterator[str]:
        try:
            yield from (self._followed() if self.follow else self._once())
        finally:
            self._drop_forward()

    def _once(self) -> Iterator[str]:
        job = self._get(f"/api/jobs/{self.job_id}")
        if job is None:
            # KubeRay sets a RayJob Running before it submits (HTTPMode) or its submitter does (K8sJobMode):
            # an unknown job on a live head of an active run is one about to be submitted, not one gone.
            raise _JobGoneError(self.job_id) if self._run().terminal else _JobNotSubmittedError(self.job_id)
        answer = self._get(f"/api/jobs/{self.job_id}/logs") or {}
        yield str(answer.get("logs", ""))

    def _followed(self) -> Iterator[str]:
        shown = 0  # characters of the log already yielded: a stream opened again replays the log from its start
        unreachable_since: float | None = None
        while True:
            try:
                if self._get(f"/api/jobs/{self.job_id}") is None:
                    if shown or self._run().terminal:
                        raise _JobGoneError(self.job_id)
                    time.sleep(self.poll)  # not submitted yet
                    continue
                replayed = 0  # characters this stream has sent
                for text in self._tail():
                    fresh = text[max(0, shown - replayed) :]
                    replayed += len(text)
                    if fresh:
                        shown += len(fresh)
                        yield fresh
                break  # Ray closed the stream: the job ended
            except RayUnreachableError:
                ended = self._ended_without_ray()
                if ended is not None:
                    self._finish(ended)
                    return
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= HEAD_ANSWER_WAIT_SECONDS:
                    raise
                self._drop_forward()  # the next request looks the head pod up again
                time.sleep(self.poll)
                continue
            unreachable_since = None
        self._finish(self._outcome())

    def _tail(self) -> Iterator[str]:
        """Ray's websocket stream of the job's log, from its first line; ends when Ray closes it (the job ended)."""
        import websocket

        forward = self._ensure_forward()
        try:
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{forward.local_port}/api/jobs/{self.job_id}/logs/tail", timeout=HTTP_TIMEOUT_SECONDS
            )
        except websocket.WebSocketBadStatusException as error:
            raise RayUnreachableError(f"Ray's dashboard on {forward.pod} refused the log stream: {error}") from error
        except (OSError, websocket.WebSocketException) as error:
            raise RayUnreachableError(f"{forward.pod}:{forward.port}: {forward.last_error or error}") from error
        try:
            ws.settimeout(self.poll)
            while True:
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    if self._ended_without_ray() is not None:
                        raise RayUnreachableError("the job ended, and its log stream stayed open") from None
                    continue
                except (OSError, websocket.WebSocketException) as error:
                    raise RayUnreachableError(f"the log stream from {forward.pod} broke: {error}") from error
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return
                yield data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        finally:
            ws.close()

    def _outcome(self) -> str | None:
        """Ray's final status of the job, else (its cluster released) the one the RayJob records, else None."""
        try:
            job = self._get(f"/api/jobs/{self.job_id}")
            if job is not None and job.get("status") in RAY_DONE:
                return str(job["status"])
        except RayUnreachableError:
            pass
        deadline = time.monotonic() + HEAD_ANSWER_WAIT_SECONDS
        while time.monotonic() < deadline:
            ended = self._ended_without_ray()
            if ended is not None:
                return ended
            time.sleep(self.poll)
        return None

    def _ended_without_ray(self) -> str | None:
        """The job's end as the API server knows it (the RayJob's jobStatus, or the run's phase), if it ended."""
        run = self._run()
        if run.job_id == self.job_id and run.job_status in RAY_DONE:
            return run.job_status
        if run.terminal:
            return "SUCCEEDED" if run.phase == RunPhase.SUCCEEDED else str(run.phase)
        if run.job_id != self.job_id:
            return "STOPPED"  # a new attempt: this job's cluster is gone
        return None

    def _finish(self, status: str | None) -> None:
        if status is not None and status != "SUCCEEDED":
            raise RayJobFailedError(f"Ray job {self.job_id} of run {self.name} ended {status}", status)

    def _run(self) -> _RunRay:
        return self.cluster.run_ray(self.name)

    def _drop_forward(self) -> None:
        if self._forward is not None:
            self._forward.close()
            self._forward = None

    def _ensure_forward(self) -> PortForward:
        if self._forward is None:
            head = self.cluster.head_pod(self.ray_cluster)
            if head is None:
                raise RayUnreachableError(f"Ray cluster {self.ray_cluster} has no running head pod")
            self._forward = PortForward(
                self.cluster.api, self.cluster.namespace, head.metadata.name, _dashboard_port(head)
            ).start()
        return self._forward

    def _get(self, path: str) -> dict[str, Any] | None:
        """GET ``path`` of Ray's dashboard on the head pod: its JSON, or None for 404."""
        forward = self._ensure_forward()
        try:
            with urllib.request.urlopen(f"{forward.url}{path}", timeout=HTTP_TIMEOUT_SECONDS) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise RayUnreachableError(f"Ray's dashboard on {forward.pod} answered {error.code} for {path}") from error
        except (OSError, ValueError) as error:
            reason = forward.last_error or error
            raise RayUnreachableError(f"{forward.pod}:{forward.port}: {reason}") from error


def _pod_log(
    cluster: _Cluster, name: str, now: _RunRay, head: str | None, *, follow: bool, notice: Notice | None
) -> Iterator[str]:
    """The submitter pod's log (K8sJobMode: it tails the Ray job), else the head pod's (Ray's own output)."""
    submitters = [p for p in cluster.pods(f"batch.kubernetes.io/job-name={now.rayjob}") if p.status.phase != "Pending"]
    if submitters:
        pod, container, note = str(submitters[-1].metadata.name), None, None
    elif head is not None:
        pod, container = head, "ray-head"
        note = f"the Ray head's own log ({pod}); the trainer's output is in the Ray job, once its dashboard answers"
    else:
        raise LogsNotFoundError(
            f"{name} has no running Ray cluster to read logs from (phase {now.phase or 'Pending'})",
            hint=f"`loka status {name}` says why; logs appear once the run is Running",
        )
    if note and notice:
        notice(note)
    kwargs: dict[str, Any] = {"container": container} if container else {}
    read = cluster.core.read_namespaced_pod_log
    if not follow:
        text: str = cluster.connection.call(f"reading the log of pod {pod}", read, pod, cluster.namespace, **kwargs)
        yield text if text.endswith("\n") or not text else text + "\n"
        return
    stream = cluster.connection.call(f"following the log of pod {pod}", read, pod, cluster.namespace, follow=True,
                                     _preload_content=False, **kwargs)  # fmt: skip
    for chunk in stream.stream():
        yield chunk.decode(errors="replace")


def dashboard(
    connection: Connection, namespace: str, name: str, *, local_port: int = 0, address: str = "127.0.0.1"
) -> PortForward:
    """Run ``name``'s Ray dashboard on ``address:local_port`` (started, checked once; close it when done).

    Raises NoDashboardError when the run has no running Ray cluster, PortForwardError when the API server or the
    kubelet refuses the port-forward, LocalPortError when the local port is taken.
    """
    cluster = _Cluster(connection, namespace)
    now = cluster.run_ray(name)
    head = cluster.head_pod(now.ray_cluster)
    if head is None:
        raise NoDashboardError(
            f"{name} has no running Ray cluster (phase {now.phase or 'Pending'}), so there is no dashboard to open",
            hint=f"`loka status {name} -w` shows when it starts",
        )
    forward = PortForward(connection.api, namespace, head.metadata.name, _dashboard_port(head), address=address,
                          local_port=local_port).start()  # fmt: skip
    try:
        forward.check()
    except BaseException:
        forward.close()
        raise
    return forward
