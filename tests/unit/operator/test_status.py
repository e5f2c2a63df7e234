"""The status calculator: every RayJob x Workload state it maps, and the transitions between them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loka_api import CheckpointStatus, Condition, RunPhase, TrainingRunStatus
from loka_operator.status import (
    Observed,
    Problem,
    calculate_status,
    decide_phase,
    kueue_wait_reason,
    workload_not_seen,
)

NOW = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)


def rayjob(deployment: str = "", job_status: str = "", *, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "qwen", "uid": "rj-uid"},
        "spec": {"suspend": suspend},
        "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status, **status},
    }


def workload(*conditions: tuple[str, str, str, str], active: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": "rayjob-qwen-1"},
        "spec": {"active": active},
        "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]},
    }


PENDING_QUOTA = workload(
    (
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set head: "
        "insufficient unused quota for nvidia.com/gpu in flavor gpu, 8 more needed",
    )
)
ADMITTED = workload(
    ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
    ("Admitted", "True", "Admitted", "The workload is admitted"),
)
PREEMPTED = workload(
    ("QuotaReserved", "False", "Preempted", "Preempted to accommodate a workload (UID: x) due to prioritization"),
    ("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x) due to prioritization"),
    ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: x) due to prioritization"),
)


def observe(
    rj: dict[str, Any] | None,
    wl: dict[str, Any] | None = None,
    *,
    queued: bool = True,
    suspend: bool = False,
    **extra: Any,
) -> Observed:
    return Observed(generation=1, suspend=suspend, queued=queued, now=NOW, rayjob=rj, workload=wl, **extra)


@pytest.mark.parametrize(
    ("rj", "wl", "queued", "suspend", "phase", "reason"),
    [
        # before the RayJob exists
        (None, None, True, False, RunPhase.PENDING, "CreatingRayJob"),
        (None, None, True, True, RunPhase.SUSPENDED, "Suspended"),
        # freshly created, Kueue has not made or admitted the Workload yet
        (rayjob(""), None, True, False, RunPhase.QUEUED, "WorkloadPending"),
        (rayjob("Initializing"), PENDING_QUOTA, True, False, RunPhase.QUEUED, "Pending"),
        (rayjob("Suspended"), PENDING_QUOTA, True, False, RunPhase.QUEUED, "Pending"),
        (rayjob("Suspending"), PENDING_QUOTA, True, False, RunPhase.QUEUED, "Pending"),
        # admitted, but Kueue has not unsuspended the RayJob yet: KubeRay only cycles it through Suspending
        (rayjob("Initializing", suspend=True), ADMITTED, True, False, RunPhase.QUEUED, "AdmittedNotStarted"),
        (rayjob("", suspend=True), ADMITTED, True, False, RunPhase.QUEUED, "AdmittedNotStarted"),
        # admitted: the Ray cluster comes up, then the trainer runs
        (rayjob(""), ADMITTED, True, False, RunPhase.STARTING, "StartingRayCluster"),
        (rayjob("Initializing"), ADMITTED, True, False, RunPhase.STARTING, "StartingRayCluster"),
        (rayjob("Waiting"), ADMITTED, True, False, RunPhase.STARTING, "StartingRayCluster"),
        (rayjob("Running", "RUNNING"), ADMITTED, True, False, RunPhase.RUNNING, "RayJobRunning"),
        (rayjob("Running", "PENDING"), ADMITTED, True, False, RunPhase.RUNNING, "RayJobRunning"),
        # preempted by Kueue: the RayJob is suspended and the run waits again, in Kueue's words
        (rayjob("Suspending"), PREEMPTED, True, False, RunPhase.SUSPENDED, "PreemptedInClusterQueue"),
        (rayjob("Suspended"), PREEMPTED, True, False, RunPhase.SUSPENDED, "PreemptedInClusterQueue"),
        # suspended by the user (Workload deactivated)
        (rayjob("Suspended"), workload(active=False), True, True, RunPhase.SUSPENDED, "Suspended"),
        (rayjob("Running", "RUNNING"), ADMITTED, True, True, RunPhase.RUNNING, "RayJobRunning"),
        # retries and the end
        (rayjob("Retrying"), ADMITTED, True, False, RunPhase.RESUMING, "Retrying"),
        (rayjob("Complete", "SUCCEEDED"), ADMITTED, True, False, RunPhase.SUCCEEDED, "RayJobSucceeded"),
        (rayjob("Complete", "STOPPED"), ADMITTED, True, False, RunPhase.FAILED, "RayJobStopped"),
        (rayjob("Failed", "FAILED", reason="AppFailed"), ADMITTED, True, False, RunPhase.FAILED, "AppFailed"),
        (
            rayjob("Failed", "FAILED", reason="DeadlineExceeded"),
            ADMITTED,
            True,
            False,
            RunPhase.FAILED,
            "DeadlineExceeded",
        ),
        (rayjob("ValidationFailed", reason="ValidationFailed"), None, True, False, RunPhase.FAILED, "ValidationFailed"),
        # without Kueue
        (rayjob(""), None, False, False, RunPhase.STARTING, "StartingRayCluster"),
        (rayjob("Running", "RUNNING"), None, False, False, RunPhase.RUNNING, "RayJobRunning"),
        (rayjob("Suspended"), None, False, True, RunPhase.SUSPENDED, "Suspended"),
        (rayjob("Suspended"), None, False, False, RunPhase.RESUMING, "Resuming"),
        (rayjob("Initializing"), None, False, True, RunPhase.SUSPENDED, "Suspending"),
    ],
)
def test_phase_for_each_rayjob_and_workload_state(  # noqa: PLR0917
    rj: dict[str, Any] | None,
    wl: dict[str, Any] | None,
    queued: bool,
    suspend: bool,
    phase: RunPhase,
    reason: str,
) -> None:
    verdict = decide_phase(observe(rj, wl, queued=queued, suspend=suspend), TrainingRunStatus())
    assert (verdict.phase, verdict.reason) == (phase, reason)


def test_queued_run_says_why_in_kueues_words() -> None:
    update = calculate_status(observe(rayjob("Suspended"), PENDING_QUOTA), TrainingRunStatus())
    assert update.status.phase == RunPhase.QUEUED
    assert "insufficient unused quota for nvidia.com/gpu" in (update.status.message or "")
    admitted = next(c for c in update.status.conditions if c.type == "Admitted")
    assert admitted.status == "False"
    assert "insufficient unused quota" in admitted.message
    assert update.status.queued_since == NOW


def test_evicted_workload_still_marked_admitted_is_not_admitted_for_the_run() -> None:
    evicting = workload(
        ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
        ("Admitted", "True", "Admitted", "The workload is admitted"),
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload due to prioritization"),
    )
    update = calculate_status(observe(rayjob("Suspending", suspend=True), evicting), TrainingRunStatus())
    admitted = next(c for c in update.status.conditions if c.type == "Admitted")
    assert (admitted.status, admitted.reason) == ("False", "EvictedPreempted")
    assert update.status.phase == RunPhase.SUSPENDED


def test_kueue_wait_reason_prefers_preemption_over_quota() -> None:
    problem = kueue_wait_reason(PREEMPTED)
    assert problem.reason == "PreemptedInClusterQueue"
    assert "due to prioritization" in problem.message


def test_invalid_spec_fails_without_children_and_recovers_when_fixed() -> None:
    invalid = Problem("InvalidVerlOverrides", "spec.verlOverrides: unknown verl config key 'trainer.nope'")
    failed = calculate_status(observe(None, invalid=invalid), TrainingRunStatus()).status
    assert failed.phase == RunPhase.FAILED
    valid = next(c for c in failed.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("False", "InvalidVerlOverrides")
    assert "trainer.nope" in valid.message
    assert failed.attempt is None
    recovered = calculate_status(observe(None), failed).status
    assert recovered.phase == RunPhase.PENDING
    assert recovered.completion_time is None
    assert next(c for c in recovered.conditions if c.type == "Valid").status == "True"


def test_missing_secret_keeps_the_run_pending_with_the_name() -> None:
    missing = Problem("SecretMissing", "waiting for Secret 'loka-s3' (keys AWS_ACCESS_KEY_ID) does not exist")
    status = calculate_status(observe(None, missing_secrets=missing), TrainingRunStatus()).status
    assert status.phase == RunPhase.PENDING
    cond = next(c for c in status.conditions if c.type == "SecretsReady")
    assert (cond.status, cond.reason) == ("False", "SecretMissing")
    assert "loka-s3" in cond.message


def walk(*steps: tuple[dict[str, Any] | None, dict[str, Any] | None, bool]) -> list[TrainingRunStatus]:
    status = TrainingRunStatus()
    seen = []
    for index, (rj, wl, suspend) in enumerate(steps):
        obs = Observed(
            generation=1, suspend=suspend, queued=True, now=NOW + timedelta(seconds=index), rayjob=rj, workload=wl
        )
        status = calculate_status(obs, status).status
        seen.append(status)
    return seen


def test_preemption_and_suspension_start_new_attempts() -> None:
    history = walk(
        (None, None, False),
        (rayjob("Suspended"), PENDING_QUOTA, False),
        (rayjob("Initializing"), ADMITTED, False),
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Suspending"), PREEMPTED, False),  # preempted: attempt 1 ends
        (rayjob("Initializing"), ADMITTED, False),
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Suspended"), workload(active=False), True),  # suspended by the user: attempt 2 ends
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Complete", "SUCCEEDED"), ADMITTED, False),
    )
    phases = [s.phase for s in history]
    assert phases == [
        RunPhase.PENDING,
        RunPhase.QUEUED,
        RunPhase.STARTING,
        RunPhase.RUNNING,
        RunPhase.SUSPENDED,
        RunPhase.RESUMING,
        RunPhase.RUNNING,
        RunPhase.SUSPENDED,
        RunPhase.RUNNING,
        RunPhase.SUCCEEDED,
    ]
    assert [s.attempt for s in history] == [None, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert history[-1].completion_time is not None
    assert history[3].start_time == NOW + timedelta(seconds=2)  # first became active at Starting


def test_admission_racing_kuberays_suspend_cycle_is_not_a_new_attempt() -> None:
    history = walk(
        (rayjob("", suspend=True), None, False),
        (rayjob("Initializing", suspend=True), ADMITTED, False),  # Kueue admitted, not yet unsuspended
        (rayjob("Suspending"), ADMITTED, False),  # KubeRay finishes the suspend it started
        (rayjob("Suspended"), ADMITTED, False),
        (rayjob(""), ADMITTED, False),
        (rayjob("Initializing"), ADMITTED, False),
        (rayjob("Running", "RUNNING"), ADMITTED, False),
    )
    assert [s.phase for s in history] == [RunPhase.QUEUED] * 4 + [RunPhase.STARTING] * 2 + [RunPhase.RUNNING]
    assert {s.attempt for s in history} == {1}


def test_retry_starts_a_new_attempt() -> None:
    history = walk(
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Retrying", failed=1), ADMITTED, False),
        (rayjob("Initializing", failed=1), ADMITTED, False),
    )
    assert [(s.phase, s.attempt, s.restarts) for s in history] == [
        (RunPhase.RUNNING, 1, 0),
        (RunPhase.RESUMING, 2, 1),
        (RunPhase.RESUMING, 2, 1),
    ]


def test_retries_the_operator_never_saw_still_count_as_attempts() -> None:
    # KubeRay can fail, retry and fail again between two reconciles; its failure counter tells.
    history = walk(
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Running", "RUNNING", failed=1), ADMITTED, False),
        (rayjob("Failed", "FAILED", failed=2), ADMITTED, False),
    )
    assert [(s.phase, s.attempt, s.restarts) for s in history] == [
        (RunPhase.RUNNING, 1, 0),
        (RunPhase.RUNNING, 2, 1),
        (RunPhase.FAILED, 2, 1),
    ]


def test_a_preempted_run_says_so_in_kueues_words() -> None:
    history = walk(
        (rayjob("Running", "RUNNING"), ADMITTED, False),
        (rayjob("Suspended"), PREEMPTED, False),
    )
    suspended = history[-1]
    assert suspended.phase == RunPhase.SUSPENDED
    condition = next(c for c in suspended.conditions if c.type == "Suspended")
    assert condition.status == "True"
    assert condition.reason == "PreemptedInClusterQueue"
    assert "Preempted to accommodate a workload" in condition.message


def test_unchanged_observation_patches_nothing() -> None:
    first = calculate_status(observe(rayjob("Running", "RUNNING"), ADMITTED), TrainingRunStatus())
    assert first.changes and first.event is not None
    again = calculate_status(observe(rayjob("Running", "RUNNING"), ADMITTED), first.status)
    assert again.changes == {}
    assert again.event is None


def test_trainer_fields_are_never_touched() -> None:
    previous = TrainingRunStatus.model_validate(
        {
            "phase": "Running",
            "attempt": 1,
            "progress": {"step": 120, "totalSteps": 900, "epoch": 2},
            "metrics": {"rewardMean": 0.61},
            "checkpoint": {"step": 100, "uri": "s3://ckpt/ns/qwen/global_step_100"},
            "wandbURL": "https://wandb.ai/x",
        }
    )
    update = calculate_status(observe(rayjob("Complete", "SUCCEEDED"), ADMITTED), previous)
    assert not {"progress", "metrics", "checkpoint", "wandbURL"} & set(update.changes)
    saved = next(c for c in update.status.conditions if c.type == "CheckpointSaved")
    assert saved.status == "True"
    assert "global_step_100" in saved.message


def test_trainer_failure_message_survives_the_failed_transition() -> None:
    previous = TrainingRunStatus(phase=RunPhase.RUNNING, attempt=1, message="reward function raised KeyError")
    update = calculate_status(observe(rayjob("Failed", "FAILED", reason="AppFailed", message="job failed")), previous)
    assert update.status.phase == RunPhase.FAILED
    assert update.status.message == "reward function raised KeyError"
    failed = next(c for c in update.status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason, failed.message) == ("True", "AppFailed", "reward function raised KeyError")
    assert update.event is not None and update.event.type == "Warning"


def test_finished_run_keeps_its_status_after_the_rayjob_is_removed() -> None:
    done = TrainingRunStatus(
        phase=RunPhase.SUCCEEDED,
        attempt=1,
        ray_job="qwen",
        completion_time=NOW,
        conditions=[Condition(type="Valid", status="True", reason="Validated")],
        checkpoint=CheckpointStatus(step=900),
    )
    update = calculate_status(observe(None), done)
    assert update.status.phase == RunPhase.SUCCEEDED
    assert update.status.ray_job == "qwen"
    assert update.status.completion_time == NOW
    assert update.event is None


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    first = calculate_status(observe(rayjob("Running", "RUNNING"), ADMITTED), TrainingRunStatus()).status
    later = Observed(
        generation=2,
        suspend=False,
        queued=True,
        now=NOW + timedelta(minutes=5),
        rayjob=rayjob("Running", "RUNNING"),
        workload=ADMITTED,
    )
    second = calculate_status(later, first).status
    training = next(c for c in second.conditions if c.type == "Training")
    assert training.last_transition_time == NOW
    assert training.observed_generation == 2
    assert second.observed_generation == 2


def test_dashboard_url_gets_a_scheme() -> None:
    rj = rayjob(
        "Running", "RUNNING", dashboardURL="qwen-abcde-head-svc.ns.svc.cluster.local:8265", rayClusterName="qwen-abcde"
    )
    status = calculate_status(observe(rj, ADMITTED), TrainingRunStatus()).status
    assert status.dashboard_url == "http://qwen-abcde-head-svc.ns.svc.cluster.local:8265"
    assert status.ray_cluster == "qwen-abcde"
    assert status.ray_job == "qwen"


DEACTIVATED_BY_KUEUE = {
    "metadata": {"name": "rayjob-qwen-1", "namespace": "team-a"},
    "spec": {"active": False},
    "status": {
        "conditions": [
            {
                "type": "QuotaReserved",
                "status": "False",
                "reason": "Deactivated",
                "message": "The workload is deactivated",
            },
            {
                "type": "Evicted",
                "status": "True",
                "reason": "DeactivatedDueToRequeuingLimitExceeded",
                "message": "The workload is deactivated due to exceeding the maximum number of re-queuing retries",
            },
        ]
    },
}


def test_a_workload_kueue_deactivated_suspends_the_run_in_kueues_words() -> None:
    update = calculate_status(observe(rayjob("Suspended"), DEACTIVATED_BY_KUEUE), TrainingRunStatus())
    assert update.status.phase == RunPhase.SUSPENDED
    suspended = next(c for c in update.status.conditions if c.type == "Suspended")
    assert suspended.reason == "DeactivatedDueToRequeuingLimitExceeded"
    assert "maximum number of re-queuing retries" in suspended.message
    assert "kubectl -n team-a patch workload rayjob-qwen-1" in suspended.message  # how to run it again
    admitted = next(c for c in update.status.conditions if c.type == "Admitted")
    assert admitted.status == "False"


def test_a_reactivated_workload_waits_for_quota_again_not_suspended() -> None:
    reactivated = {**DEACTIVATED_BY_KUEUE, "spec": {"active": True}}
    verdict = decide_phase(observe(rayjob("Suspended"), reactivated), TrainingRunStatus())
    assert verdict.phase == RunPhase.QUEUED


def test_a_refused_create_is_the_launched_condition_with_a_warning() -> None:
    refused = Problem(
        "CreateRefused",
        'the API server refused to create the RayJob qwen: rayjobs.ray.io "qwen" is forbidden: exceeded quota',
    )
    update = calculate_status(observe(None, blocked=refused), TrainingRunStatus())
    launched = next(c for c in update.status.conditions if c.type == "Launched")
    assert (launched.status, launched.reason) == ("False", "CreateRefused")
    assert "exceeded quota" in launched.message
    assert update.status.phase == RunPhase.PENDING
    assert update.event is not None and update.event.type == "Warning"
    # Still refused at the next look: no second Event; once created, Launched turns True.
    again = calculate_status(observe(None, blocked=refused), update.status)
    assert again.event is None
    created = calculate_status(observe(rayjob("")), again.status).status
    assert next(c for c in created.conditions if c.type == "Launched").status == "True"


def test_kuberays_driver_log_reaches_status_as_one_short_line() -> None:
    log = "job failed: " + "driver output " * 2000 + "\nTraceback (most recent call last):\n..."
    failed = rayjob("Failed", "FAILED", reason="AppFailed", message=log)
    update = calculate_status(observe(failed, ADMITTED), TrainingRunStatus())
    condition = next(c for c in update.status.conditions if c.type == "Failed")
    for text in (condition.message, update.status.message or "", update.event.message if update.event else ""):
        assert text.startswith("job failed:")
        assert "\n" not in text and len(text.encode()) <= 1024


def test_each_attempt_records_its_ray_job_for_loka_logs_attempt() -> None:
    history = walk(
        (rayjob("Running", "RUNNING", jobId="qwen-a1", rayClusterName="qwen-x1"), ADMITTED, False),
        (rayjob("Running", "RUNNING", jobId="qwen-a1", rayClusterName="qwen-x1"), ADMITTED, False),
        (rayjob("Suspending"), PREEMPTED, False),
        (rayjob("Running", "RUNNING", jobId="qwen-b2", rayClusterName="qwen-x2"), ADMITTED, False),
    )
    assert [(a.attempt, a.ray_job_id, a.ray_cluster) for a in history[-1].attempts] == [
        (1, "qwen-a1", "qwen-x1"),
        (2, "qwen-b2", "qwen-x2"),
    ]
    wire = history[-1].model_dump(mode="json", by_alias=True)["attempts"][0]
    assert wire["rayJobID"] == "qwen-a1"


def test_a_finished_run_keeps_the_reason_it_ended_with_once_its_rayjob_is_gone() -> None:
    # ttlSecondsAfterFinished deletes the RayJob; the run's Failed condition must still say why it failed.
    running = calculate_status(observe(rayjob("Running")), TrainingRunStatus()).status
    failed = calculate_status(
        observe(rayjob("Failed", "FAILED", reason="AppFailed", message="driver exited with code 1")), running
    ).status
    after_ttl = calculate_status(observe(None), failed).status
    condition = next(c for c in after_ttl.conditions if c.type == "Failed")
    assert after_ttl.phase == RunPhase.FAILED
    assert (condition.status, condition.reason, condition.message) == ("True", "AppFailed", "driver exited with code 1")


def held_rayjob(created: datetime) -> dict[str, Any]:
    held = rayjob("Suspended", suspend=True)
    held["metadata"]["creationTimestamp"] = created.isoformat().replace("+00:00", "Z")
    return held


def test_a_queued_run_whose_workload_never_shows_names_the_kueue_setting_that_hides_it() -> None:
    # Kueue made a Workload but did not copy the run label: the narrow watch never delivers it.
    young = held_rayjob(NOW - timedelta(seconds=10))
    assert workload_not_seen(young, "loka.dev/run", 60, NOW) == (None, 51)  # look again once the grace is over
    problem, later = workload_not_seen(held_rayjob(NOW - timedelta(seconds=61)), "loka.dev/run", 60, NOW)
    assert problem is not None and later is None
    update = calculate_status(observe(held_rayjob(NOW), None, no_workload=problem), TrainingRunStatus())
    admitted = next(c for c in update.status.conditions if c.type == "Admitted")
    assert (update.status.phase, admitted.status, admitted.reason) == (RunPhase.QUEUED, "False", "WorkloadNotSeen")
    for said in (admitted.message, update.status.message or ""):
        assert "integrations.labelKeysToCopy: [loka.dev/run]" in said and "--workload-selector=" in said, said
    # Watching every Workload, the label is not the cause: Kueue itself is.
    broad, _ = workload_not_seen(held_rayjob(NOW - timedelta(seconds=61)), "", 60, NOW)
    assert broad is not None and "labelKeysToCopy" not in broad.message and "integrations.frameworks" in broad.message
    # Kueue let the RayJob go (admitted, or never held it): nothing is missing.
    assert workload_not_seen(rayjob("Running", "RUNNING"), "loka.dev/run", 60, NOW) == (None, None)
