"""The trainer's API calls are bounded: an API server that accepts and never answers cannot hold it past its stop
budget (pods get 30 s after SIGTERM; Ray's job supervisor gives the trainer 25 s of them).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loka_trainer.run_client import RunClient, RunIdentity, api_client
from loka_trainer.status_reporter import StatusReporter


@pytest.fixture
def silent_api_server() -> Iterator[str]:
    """A TCP server that accepts every connection and never sends a byte back."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    closing.set()
    listener.close()
    for connection in held:
        connection.close()


def runs_at(host: str, folder: Path, **bounds: tuple[float, float]) -> RunClient:
    """The trainer's client as `loka-trainer run` makes it, from a kubeconfig naming ``host``."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "silent", "cluster": {"server": host}}],
        "users": [{"name": "trainer", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "silent", "user": "trainer"}}],
        "current-context": "c",
    }
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return RunClient(api_client(str(path)), RunIdentity("qwen", "team-a"), **bounds)


def test_a_status_patch_to_an_api_server_that_never_answers_gives_up_instead_of_blocking_shutdown(
    silent_api_server: str, tmp_path: Path
) -> None:
    reporter = StatusReporter(runs_at(silent_api_server, tmp_path).patch_status)
    returned = threading.Event()

    def report() -> None:
        reporter.report_message("trainer stopped by SIGTERM; resumes from checkpoint step 4")
        returned.set()

    threading.Thread(target=report, daemon=True).start()
    assert returned.wait(timeout=25), "the status patch is still waiting on the API server past the stop budget"
    assert reporter.patches_sent == 0


def test_reading_the_run_from_an_api_server_that_never_answers_gives_up(silent_api_server: str, tmp_path: Path) -> None:
    runs = runs_at(silent_api_server, tmp_path, timeout=(0.5, 1.0))  # any bound holds; a short one keeps CI quick
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            runs.get()
        except Exception as error:  # what the trainer sees: an error to report, not a hang
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=25)
    assert not reader.is_alive(), "reading the run is still waiting on the API server"
    assert outcome, "the read returned a run from a server that never answered"


def test_a_trainer_finds_its_attempt_by_its_ray_job_or_its_ray_cluster() -> None:
    import json

    from loka_api import TrainingRunStatus

    job_config = json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "qwen-k2x9p"}})
    env = {"LOKA_RUN_NAME": "qwen", "LOKA_RUN_NAMESPACE": "team-a", "RAY_JOB_CONFIG_JSON_ENV_VAR": job_config}
    identity = RunIdentity.from_env(env)
    assert (identity.ray_job, identity.ray_cluster, identity.holder) == ("qwen-k2x9p", None, "qwen-k2x9p")

    status = TrainingRunStatus.model_validate(
        {"attempt": 3, "rayCluster": "qwen-c3c3c", "attempts": [
            {"attempt": 2, "rayJobID": "qwen-k2x9p", "rayCluster": "qwen-b2b2b"},
            {"attempt": 3, "rayJobID": "qwen-m3m3m", "rayCluster": "qwen-c3c3c"},
        ]}
    )  # fmt: skip
    assert identity.attempt_in(status) == 2  # its own attempt, though a newer one runs now
    assert RunIdentity("qwen", "team-a", ray_cluster="qwen-c3c3c").attempt_in(status) == 3
    assert RunIdentity("qwen", "team-a", ray_cluster="qwen-d4d4d").attempt_in(status) is None  # not counted yet
