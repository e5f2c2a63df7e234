"""An Evaluation's way through its phases, decided from its source run and its Job alone (no API server): it waits
for the rollouts it names, fails for good when they can never come, and follows its Job to the end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loka_api import TrainDataStatus, TrainingRun
from loka_api.evaluation import Evaluation, EvaluationStatus
from loka_operator.evaluations import (
    EvaluationObserved,
    RolloutsState,
    calculate_evaluation_status,
    resolve_rollouts,
    status_changes,
)
from loka_operator.lineage import resolve_train_data
from loka_operator.status import Problem
from tests.unit.api.test_evaluation_kind import MANIFEST

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
ROLLOUTS = "s3://loka/ckpt/loka/grpo-1/u-1/rollouts"


def evaluation(steps: str = "latest", **status: Any) -> Evaluation:
    body = {**MANIFEST, "spec": {**MANIFEST["spec"], "rollouts": {"fromRun": "grpo-1", "steps": steps}}}
    return Evaluation.model_validate({**body, "status": status})


def source(phase: str | None, step: int | None = None, *, keeps: bool = True, endpoint: str | None = None) -> Any:
    spec: dict[str, Any] = {
        "image": "img",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://loka/data/train.parquet"},
        "checkpoints": {"uri": "s3://loka/ckpt"},
    }
    if keeps:
        spec["rollouts"] = {"every": 1}
    if endpoint:
        spec["storage"] = {"endpoint": endpoint}
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if step is not None:
        status["rollouts"] = {"uri": ROLLOUTS, "step": step}
    return {"metadata": {"name": "grpo-1", "namespace": "loka", "uid": "u-1"}, "spec": spec, "status": status}


def test_latest_waits_for_the_run_to_succeed_then_takes_its_rollouts() -> None:
    waiting = resolve_rollouts(evaluation(), source("Running", 4))
    assert waiting.waiting is not None and waiting.waiting.reason == "WaitingForSource"
    assert "rollouts up to step 4" in waiting.waiting.message
    assert resolve_rollouts(evaluation(), source("Succeeded", 8)) == RolloutsState(uri=ROLLOUTS)


def test_named_steps_start_once_the_last_of_them_is_kept() -> None:
    assert resolve_rollouts(evaluation("2,4"), source("Running", 3)).waiting is not None
    assert resolve_rollouts(evaluation("2,4"), source("Running", 4)).uri == ROLLOUTS


@pytest.mark.parametrize(
    ("steps", "body", "reason"),
    [
        ("latest", source("Failed", 4), "SourceFailed"),
        ("latest", source("Succeeded"), "SourceEnded"),
        ("2,40", source("Succeeded", 8), "SourceEnded"),
        ("latest", source("Running", keeps=False), "SourceKeepsNoRollouts"),
        ("latest", source("Running", endpoint="http://minio:9000"), "SourceStorageMismatch"),
    ],
)
def test_rollouts_that_can_never_come_fail_the_evaluation_saying_why(steps: str, body: Any, reason: str) -> None:
    state = resolve_rollouts(evaluation(steps), body)
    assert state.failed is not None and state.failed.reason == reason
    status = calculate_evaluation_status(EvaluationObserved(1, NOW, rollouts=state), EvaluationStatus())
    assert status.phase == "Failed" and status.message == state.failed.message
    assert status.completion_time == NOW


def test_a_missing_source_is_waited_for_and_a_recorded_folder_never_changes() -> None:
    state = resolve_rollouts(evaluation(), None)
    assert state.waiting is not None and state.waiting.reason == "SourceNotFound"
    assert resolve_rollouts(evaluation(rolloutsURI=ROLLOUTS), None).uri == ROLLOUTS


def job(suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "eval-1-eval"}, "spec": {"suspend": suspend}, "status": status}


def phase_of(observed: EvaluationObserved, previous: EvaluationStatus | None = None) -> EvaluationStatus:
    return calculate_evaluation_status(observed, previous or EvaluationStatus(rolloutsURI=ROLLOUTS))


def test_the_job_decides_queued_running_succeeded_and_failed() -> None:
    ready = RolloutsState(uri=ROLLOUTS)
    queued = phase_of(EvaluationObserved(1, NOW, rollouts=ready, job=job(suspend=True)))
    assert queued.phase == "Queued" and "Kueue" in (queued.message or "")
    running = phase_of(EvaluationObserved(1, NOW, rollouts=ready, job=job(startTime="2026-12-07T04:00:05Z")))
    assert running.phase == "Running" and running.job == "eval-1-eval" and running.start_time is not None
    complete = [{"type": "Complete", "status": "True"}]
    done = phase_of(
        EvaluationObserved(1, NOW, rollouts=ready, job=job(conditions=complete, completionTime="2026-12-07T04:01:00Z"))
    )
    assert done.phase == "Succeeded" and done.completion_time == datetime(2026, 12, 7, 4, 1, tzinfo=UTC)
    failed = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the"}]
    said = EvaluationStatus(rolloutsURI=ROLLOUTS, message="evaluation failed: judges[strict].rubric: not mounted")
    broken = phase_of(EvaluationObserved(1, NOW, rollouts=ready, job=job(conditions=failed)), said)
    assert broken.phase == "Failed"
    assert broken.message is not None and "Job eval-1-eval failed" in broken.message and "rubric" in broken.message


def test_missing_secrets_hold_it_pending_and_an_end_is_final() -> None:
    missing = Problem("SecretMissing", "waiting for Secret 'judge' (keys key) does not exist")
    pending = phase_of(EvaluationObserved(1, NOW, rollouts=RolloutsState(uri=ROLLOUTS), missing_secrets=missing))
    assert pending.phase == "Pending" and pending.message == missing.message
    ended = EvaluationStatus(phase="Succeeded", rolloutsURI=ROLLOUTS, samplesJudged=12)
    again = calculate_evaluation_status(EvaluationObserved(2, NOW, invalid=missing), ended)
    assert again.phase == "Succeeded"


def test_only_the_operators_fields_are_written_and_only_when_they_change() -> None:
    before = EvaluationStatus(rolloutsURI=ROLLOUTS, samplesJudged=12, agreement=0.5)
    after = phase_of(EvaluationObserved(1, NOW, rollouts=RolloutsState(uri=ROLLOUTS), job=job()), before)
    changes = status_changes(before, after)
    assert changes["phase"] == "Running" and "samplesJudged" not in changes and "agreement" not in changes
    assert status_changes(after, after) == {}


# ------------------------------------------------------------------ a reward model trained on an Evaluation's pairs


def rm_run(**status: Any) -> TrainingRun:
    spec = {
        "algorithm": "rm",
        "engine": "trl",
        "image": "img",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"fromEvaluation": "eval-1"},
    }
    return TrainingRun.model_validate(
        {"metadata": {"name": "rm-1", "namespace": "loka"}, "spec": spec, "status": status}
    )


def evaluation_body(phase: str | None, **status: Any) -> dict[str, Any]:
    body = evaluation().model_dump(mode="json", by_alias=True)
    body["metadata"]["uid"] = "e-1"
    body["status"] = {"phase": phase, **status} if phase else status
    return body


PAIRS = "s3://loka/evals/eval-1/preferences.jsonl"


def test_a_reward_model_run_waits_for_its_evaluation_then_records_its_pairs() -> None:
    waiting = resolve_train_data(rm_run(), evaluation_body("Running"))
    assert waiting.waiting is not None and "waiting for Evaluation 'eval-1' to succeed (it is Running)" in (
        waiting.waiting.message
    )
    assert waiting.data.uid == "e-1"
    ready = resolve_train_data(rm_run(), evaluation_body("Succeeded", preferences=12, preferencesURI=PAIRS))
    assert ready.ready and ready.data == TrainDataStatus(evaluation="eval-1", uid="e-1", uri=PAIRS)
    recorded = rm_run(trainData={"evaluation": "eval-1", "uid": "e-1", "uri": PAIRS})
    assert resolve_train_data(recorded, None).launchable(recorded.status.train_data)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (evaluation_body("Failed", message="Job eval-1-eval failed"), "EvaluationFailed"),
        (evaluation_body("Succeeded", preferences=0, preferencesURI=PAIRS, samplesJudged=8), "EvaluationWithoutPairs"),
    ],
)
def test_an_evaluation_that_gives_no_pairs_fails_the_run_saying_why(body: dict[str, Any], reason: str) -> None:
    state = resolve_train_data(rm_run(), body)
    assert state.failed is not None and state.failed.reason == reason
    seen = rm_run(trainData={"evaluation": "eval-1", "uid": "e-1"})
    gone = resolve_train_data(seen, None)
    assert gone.failed is not None and gone.failed.reason == "EvaluationDeleted"
