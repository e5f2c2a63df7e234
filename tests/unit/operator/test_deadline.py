"""spec.deadline: KubeRay's per-attempt clock pointed at the run's deadline, and how the run ends when it passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loka_api import RunPhase, TrainingRunStatus
from loka_operator import deadline
from loka_operator.builders import RayJobSettings, build_rayjob
from loka_operator.status import Observed, calculate_status
from tests.unit.operator.test_builders import make_spec

STARTED = datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC)


def running(**status: Any) -> TrainingRunStatus:
    return TrainingRunStatus.model_validate(
        {"phase": "Running", "attempt": 1, "startTime": STARTED.isoformat(), **status}
    )


def rayjob(
    deployment: str, started: datetime | None = None, job_status: str = "RUNNING", **extra: Any
) -> dict[str, Any]:
    status: dict[str, Any] = {"jobDeploymentStatus": deployment, "jobStatus": job_status, **extra}
    if started is not None:
        status["startTime"] = started.isoformat().replace("+00:00", "Z")
    return {"metadata": {"name": "qwen", "uid": "rj"}, "spec": {}, "status": status}


def test_kuberays_clock_of_each_attempt_ends_at_the_runs_deadline() -> None:
    spec = make_spec(deadline={"seconds": 3600})
    before_start = TrainingRunStatus()
    assert deadline.active_deadline_seconds(spec, before_start, None, STARTED) == 3600
    # attempt 2 started 40 minutes into the run: KubeRay restarted its clock, so it gets the 20 minutes left
    second = rayjob("Running", STARTED + timedelta(minutes=40))
    assert deadline.active_deadline_seconds(spec, running(), second, STARTED + timedelta(minutes=41)) == 1200
    # an attempt admitted after the deadline fails at once (KubeRay refuses 0)
    late = rayjob("Initializing", STARTED + timedelta(hours=2))
    assert deadline.active_deadline_seconds(spec, running(), late, STARTED + timedelta(hours=2)) == 1
    assert deadline.active_deadline_seconds(make_spec(), running(), second, STARTED) is None


def test_the_rayjob_carries_the_deadline_left() -> None:
    job = build_rayjob(
        make_spec(deadline={"seconds": 7200}), run="qwen", namespace="team-a", uid="u",
        settings=RayJobSettings(), active_deadline_seconds=5000,
    )  # fmt: skip
    assert job["spec"]["activeDeadlineSeconds"] == 5000
    plain = build_rayjob(make_spec(), run="qwen", namespace="team-a", uid="u", settings=RayJobSettings())
    assert "activeDeadlineSeconds" not in plain["spec"]


def test_a_run_past_its_deadline_fails_with_reason_deadline_exceeded_in_its_own_words() -> None:
    spec = make_spec(deadline={"seconds": 3600})
    now = STARTED + timedelta(hours=1, seconds=5)
    previous = running(message="step 41/100")
    assert deadline.exceeded(spec, previous, STARTED + timedelta(minutes=59)) is None
    passed = deadline.exceeded(spec, previous, now)
    assert passed is not None
    # KubeRay failed the attempt at the deadline (its per-attempt words are not the run's)
    kuberay = rayjob("Failed", STARTED, "STOPPED", reason="DeadlineExceeded", message="passed activeDeadlineSeconds")
    obs = Observed(1, False, True, now, rayjob=kuberay, deadline=passed)
    update = calculate_status(obs, previous)
    assert update.status.phase == RunPhase.FAILED
    failed = next(c for c in update.status.conditions if c.type == "Failed")
    assert failed.reason == "DeadlineExceeded"
    assert "spec.deadline.seconds 3600" in failed.message and "last checkpoint" in failed.message
    assert update.status.message is not None and "deadline" in update.status.message
    assert update.event is not None and update.event.reason == "Failed"
    # and it stays so: the trainer's closing words and KubeRay's later state do not rewrite why it ended
    later = update.status.model_copy(update={"message": "trainer stopped by SIGTERM; saved step 42 before stopping"})
    again = calculate_status(Observed(1, False, True, now + timedelta(minutes=1), rayjob=None, deadline=passed), later)
    assert next(c for c in again.status.conditions if c.type == "Failed").reason == "DeadlineExceeded"
    assert again.changes == {}


def test_a_run_that_succeeded_before_its_deadline_stays_succeeded() -> None:
    spec = make_spec(deadline={"seconds": 3600})
    done = TrainingRunStatus.model_validate(
        {"phase": "Succeeded", "attempt": 1, "startTime": STARTED.isoformat(),
         "conditions": [{"type": "Succeeded", "status": "True", "reason": "RayJobSucceeded", "message": "ok"}]}
    )  # fmt: skip
    now = STARTED + timedelta(hours=2)
    obs = Observed(1, False, True, now, rayjob=None, deadline=deadline.exceeded(spec, done, now))
    assert calculate_status(obs, done).status.phase == RunPhase.SUCCEEDED
