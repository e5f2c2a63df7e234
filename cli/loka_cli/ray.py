"""A run's Ray cluster: the trainer's logs (Ray's job API on the head pod, through the API server's port-forward)
and the dashboard (`kubectl port-forward` to the head service, as a user would type it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from typing import Any, TextIO

from loka_api import kinds
from loka_api.phases import TERMINAL
from loka_cli.errors import EXIT_FAILED, EXIT_OK, CliError, not_found, usage
from loka_client import Client
from loka_client.localhost import port_free

JSON = dict[str, Any]
DASHBOARD_PORT = 8265
RAY_DONE = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
POLL_SECONDS = 2.0
# How long `loka logs -f` keeps asking a head pod that does not answer its port-forward yet.
HEAD_START_WAIT_SECONDS = 30.0


class RayUnreachableError(Exception):
    """The head pod's dashboard port did not answer through the port-forward."""


def _http_get(
    client: Client, pod: str, path: str, *, port: int = DASHBOARD_PORT, timeout: float = 20
) -> tuple[int, bytes]:
    """One HTTP GET to ``pod:port`` over the API server's port-forward (pods/portforward, as kubectl uses)."""
    from kubernetes.stream import portforward

    try:
        forward = portforward(
            client.connection.core.connect_get_namespaced_pod_portforward, pod, client.namespace, ports=str(port)
        )
    except Exception as error:
        raise RayUnreachableError(f"port-forward to {pod}: {error}") from error
    sock = forward.socket(port)
    sock.settimeout(timeout)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise RayUnreachableError(forward.error(port) or f"{pod}:{port} closed the connection")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return code, body[:length]
        while True:  # chunked or until close; the remote end's close is not always passed on, so stop at the last chunk
            if headers.get("transfer-encoding") == "chunked" and body.endswith(b"0\r\n\r\n"):
                return code, _dechunk(body)
            chunk = sock.recv(65536)
            if not chunk:
                return code, _dechunk(body) if headers.get("transfer-encoding") == "chunked" else body
            body += chunk
    except (TimeoutError, OSError) as error:
        raise RayUnreachableError(forward.error(port) or f"{pod}:{port} did not answer ({error})") from error
    finally:
        with contextlib.suppress(Exception):
            sock.close()
        with contextlib.suppress(Exception):
            forward.close()


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def _ray_json(client: Client, pod: str, path: str) -> JSON | None:
    code, body = _http_get(client, pod, path)
    if code == 404:
        return None
    if code != 200:
        raise RayUnreachableError(f"Ray's dashboard on {pod} answered {code} for {path}")
    answer: JSON = json.loads(body)
    return answer


def _pods(client: Client, label_selector: str) -> list[Any]:
    answer = client.connection.call(
        f"listing pods in {client.namespace!r}",
        client.connection.core.list_namespaced_pod,
        client.namespace,
        label_selector=label_selector,
    )
    return list(answer.items)


def _head_pod(client: Client, ray_cluster: str | None) -> str | None:
    if not ray_cluster:
        return None
    pods = _pods(client, f"ray.io/cluster={ray_cluster},ray.io/node-type=head")
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
    return running[0].metadata.name if running else None


def _attempt_job(run: JSON, rayjob: JSON | None, attempt: int | None) -> tuple[int | None, str | None, str | None]:
    """(attempt, Ray job id, Ray cluster) for the attempt asked for (the current one by default)."""
    status = run.get("status") or {}
    current = status.get("attempt")
    rj_status = (rayjob or {}).get("status") or {}
    if attempt is None or attempt == current:
        return current, rj_status.get("jobId"), rj_status.get("rayClusterName")
    for record in status.get("attempts") or []:
        if record.get("attempt") == attempt:
            return attempt, record.get("rayJobID"), record.get("rayCluster")
    recorded = ", ".join(str(r.get("attempt")) for r in status.get("attempts") or []) or "none"
    raise not_found(
        f"{run['metadata']['name']} has no record of attempt {attempt} (current attempt: {current or 'none yet'})",
        hint=f"attempts with a recorded Ray job: {recorded}",
    )


def logs(client: Client, name: str, *, follow: bool, attempt: int | None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    run = client.get(name).manifest
    status = run.get("status") or {}
    rayjob = client.get_child(kinds.RAY_JOB, status.get("rayJob") or name)
    number, job_id, ray_cluster = _attempt_job(run, rayjob, attempt)
    current_cluster = ((rayjob or {}).get("status") or {}).get("rayClusterName")
    head = _head_pod(client, current_cluster)
    if head is not None and job_id:
        try:
            return _ray_job_logs_of_a_starting_head(client, name, head, job_id, follow=follow, out=out)
        except RayUnreachableError as error:
            if attempt is not None and attempt != status.get("attempt"):
                raise CliError(f"attempt {attempt}'s Ray job {job_id} could not be read: {error}") from error
            print(f"loka logs: Ray's job API on {head} did not answer ({error}); showing pod logs", file=sys.stderr)
        except _JobNotSubmittedError:
            raise not_found(
                f"attempt {number}'s Ray job {job_id} has not been submitted to Ray cluster {ray_cluster} yet "
                "(KubeRay marks the RayJob Running a moment before it submits the job)",
                hint=f"`loka logs {name} -f` waits for the job and follows it",
            ) from None
        except _JobGoneError as gone:
            raise not_found(
                f"attempt {number}'s Ray job {job_id} ran on Ray cluster {ray_cluster or '?'}, which is gone: "
                "KubeRay deletes an attempt's Ray cluster when the attempt ends, and its logs go with it",
                hint=f"the current attempt is {status.get('attempt')}: `loka logs {name}`",
            ) from gone
    elif attempt is not None and attempt != status.get("attempt"):
        raise not_found(
            f"attempt {attempt} ran on Ray cluster {ray_cluster or '?'}, which is gone, and its logs with it",
            hint=f"the current attempt is {status.get('attempt')}: `loka logs {name}`",
        )
    return _pod_logs(client, name, run, rayjob, head, follow=follow, out=out)


def _ray_job_logs_of_a_starting_head(
    client: Client, name: str, head: str, job_id: str, *, follow: bool, out: TextIO
) -> int:
    """With -f, a head pod that does not serve its port-forward yet (a kubelet that has just started it) is asked
    again for a while before the pod's own log is shown instead; without -f, once."""
    deadline = time.monotonic() + (HEAD_START_WAIT_SECONDS if follow else 0)
    printed = _Printed(out)
    while True:
        try:
            return _ray_job_logs(client, name, head, job_id, follow=follow, out=printed)  # type: ignore[arg-type]
        except RayUnreachableError:
            phase = (client.get(name).manifest.get("status") or {}).get("phase")
            if printed.anything or time.monotonic() >= deadline or phase in TERMINAL:
                raise  # once something was shown, asking again would show it twice
            time.sleep(POLL_SECONDS)


class _Printed:
    """``out``, remembering whether anything was written to it."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.anything = out, False

    def write(self, text: str) -> int:
        self.anything = self.anything or bool(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


class _JobGoneError(Exception):
    pass


class _JobNotSubmittedError(Exception):
    pass


def _ray_job_logs(client: Client, name: str, head: str, job_id: str, *, follow: bool, out: TextIO) -> int:
    shown = ""
    while True:
        job = _ray_json(client, head, f"/api/jobs/{job_id}")
        if job is None:
            # KubeRay sets a RayJob Running before it submits (HTTPMode) or its submitter does (K8sJobMode):
            # an unknown job on a live head of an active run is one about to be submitted, not one gone.
            phase = (client.get(name).manifest.get("status") or {}).get("phase")
            if shown or phase in TERMINAL:
                raise _JobGoneError(job_id)
            if not follow:
                raise _JobNotSubmittedError(job_id)
            time.sleep(POLL_SECONDS)
            continue
        answer = _ray_json(client, head, f"/api/jobs/{job_id}/logs") or {}
        text = str(answer.get("logs", ""))
        new = text[len(shown) :] if text.startswith(shown) else text
        if new:
            out.write(new)
            out.flush()
        shown = text
        if not follow:
            return EXIT_OK
        if job.get("status") in RAY_DONE:
            return EXIT_OK if job.get("status") == "SUCCEEDED" else EXIT_FAILED
        phase = (client.get(name).manifest.get("status") or {}).get("phase")
        if phase in TERMINAL:
            return EXIT_OK if phase == "Succeeded" else EXIT_FAILED
        time.sleep(POLL_SECONDS)


def _pod_logs(
    client: Client, name: str, run: JSON, rayjob: JSON | None, head: str | None, *, follow: bool, out: TextIO
) -> int:
    """The submitter pod's log (K8sJobMode: it tails the Ray job), else the head pod's (Ray's own output)."""
    rayjob_name = (rayjob or {}).get("metadata", {}).get("name") or name
    submitters = [
        p for p in _pods(client, f"batch.kubernetes.io/job-name={rayjob_name}") if p.status.phase != "Pending"
    ]
    if submitters:
        pod, container, note = submitters[-1].metadata.name, None, None
    elif head is not None:
        pod, container = head, "ray-head"
        note = f"the Ray head's own log ({pod}); the trainer's output is in the Ray job, once its dashboard answers"
    else:
        phase = (run.get("status") or {}).get("phase") or "Pending"
        raise not_found(
            f"{name} has no running Ray cluster to read logs from (phase {phase})",
            hint=f"`loka status {name}` says why; logs appear once the run is Running",
        )
    if note:
        print(f"loka logs: {note}", file=sys.stderr)
    kwargs: JSON = {"container": container} if container else {}
    if not follow:
        text = client.connection.call(
            f"reading the log of pod {pod}",
            client.connection.core.read_namespaced_pod_log,
            pod,
            client.namespace,
            **kwargs,
        )
        out.write(text if text.endswith("\n") or not text else text + "\n")
        return EXIT_OK
    stream = client.connection.call(
        f"following the log of pod {pod}",
        client.connection.core.read_namespaced_pod_log,
        pod,
        client.namespace,
        follow=True,
        _preload_content=False,
        **kwargs,
    )
    for chunk in stream.stream():
        out.write(chunk.decode(errors="replace"))
        out.flush()
    return EXIT_OK


def dashboard(client: Client, name: str, *, port: int, address: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    run = client.get(name).manifest
    status = run.get("status") or {}
    rayjob = client.get_child(kinds.RAY_JOB, status.get("rayJob") or name)
    ray_cluster = ((rayjob or {}).get("status") or {}).get("rayClusterName")
    phase = status.get("phase") or "Pending"
    if not ray_cluster or _head_pod(client, ray_cluster) is None:
        raise not_found(
            f"{name} has no running Ray cluster (phase {phase}), so there is no dashboard to open",
            hint=f"`loka status {name} -w` shows when it starts",
        )
    body = client.get_child(kinds.RAY_CLUSTER, ray_cluster) or {}
    service = ((body.get("status") or {}).get("head") or {}).get("serviceName") or f"{ray_cluster}-head-svc"
    svc = client.connection.call(
        f"reading Service {service}", client.connection.core.read_namespaced_service, service, client.namespace
    )
    remote = next((p.port for p in svc.spec.ports or [] if p.name == "dashboard"), DASHBOARD_PORT)
    if not port_free(address, port):
        raise usage(f"--port: {address}:{port} is already in use on this machine", "pass another one, e.g. --port 8266")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise CliError("loka dashboard runs `kubectl port-forward`, and kubectl is not on PATH", hint="install kubectl")
    command = [kubectl, "port-forward", f"service/{service}", f"{port}:{remote}", f"--address={address}",
               f"--namespace={client.namespace}"]  # fmt: skip
    if client.connection.context:
        command.append(f"--context={client.connection.context}")
    if client.connection.kubeconfig:
        command.append(f"--kubeconfig={client.connection.kubeconfig}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    try:
        first = process.stdout.readline()
        if not first.startswith("Forwarding from"):
            process.wait(timeout=10)
            raise CliError(f"kubectl port-forward to service/{service} failed: {first.strip()}")
        host = "localhost" if address in ("127.0.0.1", "localhost") else address
        print(
            f"Ray dashboard of {name}: http://{host}:{port}   (service/{service}; Ctrl-C to stop)", file=out, flush=True
        )
        for line in process.stdout:
            if "error" in line.lower():
                print(f"kubectl: {line.rstrip()}", file=sys.stderr)
        return EXIT_OK if process.wait() == 0 else EXIT_FAILED
    finally:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
