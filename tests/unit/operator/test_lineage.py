"""spec.model.fromRun: when a run waits for its source, when it fails, and which checkpoint it starts from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loka_api import RunPhase, SourceStatus, TrainingRun
from loka_operator.lineage import Marker, SourceWaiters, resolve
from loka_operator.status import Observed, SourceState, calculate_status

NS = "team-a"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CKPT = "s3://ckpt/runs"


def source(
    phase: str | None = "Running", step: int | None = None, *, uid: str = "uid-sft", message: str = "", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "loka.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "sft", "namespace": NS, "uid": uid},
        "spec": {
            "algorithm": "sft",
            "image": "img",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
            "data": {"train": "s3://d/t.parquet", "responseKey": "response"},
            "checkpoints": {"uri": CKPT, "every": 10},
            **spec,
        },
        "status": {},
    }
    if phase:
        body["status"]["phase"] = phase
    if step is not None:
        body["status"]["checkpoint"] = {"step": step, "uri": f"{CKPT}/{NS}/sft/uid-sft/global_step_{step}"}
    if message:
        body["status"]["message"] = message
    return body


def waiting_run(checkpoint: str = "final", *, recorded: SourceStatus | None = None, name: str = "sft") -> TrainingRun:
    run = TrainingRun.model_validate(
        {
            "metadata": {"name": "grpo", "namespace": NS, "uid": "uid-grpo"},
            "spec": {
                "image": "img",
                "model": {"fromRun": {"name": name, "checkpoint": checkpoint}},
                "data": {"train": "s3://d/rl.parquet"},
                "checkpoints": {"uri": CKPT},
            },
        }
    )
    run.status.source = recorded
    return run


def no_runs(name: str) -> dict[str, Any] | None:
    del name
    return None


def test_a_final_checkpoint_is_waited_for_until_the_source_succeeds() -> None:
    state = resolve(waiting_run(), source("Running", 20), lookup=no_runs)
    assert state.waiting is not None and state.failed is None
    assert state.waiting.reason == "WaitingForSource"
    assert "run 'sft'" in state.waiting.message and "its final checkpoint" in state.waiting.message
    assert "Running, checkpoint step 20" in state.waiting.message
    assert state.source == SourceStatus(run="sft", uid="uid-sft")  # the uid is recorded at first sight

    ready = resolve(waiting_run(), source("Succeeded", 30), lookup=no_runs, marker=Marker(30))
    assert ready.ready
    uri = f"{CKPT}/{NS}/sft/uid-sft/global_step_30"
    assert ready.source == SourceStatus(run="sft", uid="uid-sft", step=30, uri=uri)


def test_the_checkpoint_handed_over_is_the_one_under_the_source_runs_uid() -> None:
    # Checkpoints are keyed by run uid: a later run of the same name never hands over its own.
    state = resolve(waiting_run(), source("Succeeded", 30, uid="uid-second"), lookup=no_runs, marker=Marker(30))
    assert state.source.uid == "uid-second"
    assert state.source.uri == f"{CKPT}/{NS}/sft/uid-second/global_step_30"


def test_latest_takes_the_newest_checkpoint_as_soon_as_there_is_one() -> None:
    assert resolve(waiting_run("latest"), source("Running"), lookup=no_runs).waiting is not None
    ready = resolve(waiting_run("latest"), source("Running", 10), lookup=no_runs)
    assert (ready.source.step, ready.ready) == (10, True)


@pytest.mark.parametrize(
    ("saved", "phase", "outcome"),
    [
        (10, "Running", "wait"),  # step 20 not reached yet
        (20, "Running", 20),  # the newest checkpoint is the one asked for
        (40, "Running", 20),  # saved on the way (every 10): the trainer checks it is still in S3
        (30, "Succeeded", 20),
        (10, "Succeeded", "SourceEnded"),
        (10, "Failed", "SourceFailed"),
    ],
)
def test_a_step_number_waits_until_the_source_saved_that_step(saved: int, phase: str, outcome: object) -> None:
    state = resolve(waiting_run("20"), source(phase, saved), lookup=no_runs)
    if outcome == "wait":
        assert state.waiting is not None
    elif isinstance(outcome, int):
        assert (state.ready, state.source.step) == (True, outcome)
    else:
        assert state.failed is not None and state.failed.reason == outcome


def test_a_step_the_source_passed_without_saving_fails_at_once() -> None:
    state = resolve(waiting_run("25"), source("Running", 30), lookup=no_runs)
    assert state.failed is not None and state.failed.reason == "SourceSkippedStep"
    assert "every 10 steps" in state.failed.message


def test_a_failed_source_fails_the_waiting_run_with_its_reason() -> None:
    state = resolve(waiting_run(), source("Failed", 10, message="trainer failed: CUDA out of memory"), lookup=no_runs)
    assert state.failed is not None
    assert state.failed.reason == "SourceFailed"
    assert "CUDA out of memory" in state.failed.message


def test_a_source_that_does_not_exist_yet_is_waited_for() -> None:
    state = resolve(waiting_run(), None, lookup=no_runs)
    assert state.waiting is not None and state.waiting.reason == "SourceNotFound"
    assert state.source == SourceStatus(run="sft")


def test_a_source_deleted_after_it_was_seen_fails_the_run() -> None:
    seen = SourceStatus(run="sft", uid="uid-sft")
    state = resolve(waiting_run(recorded=seen), None, lookup=no_runs)
    assert state.failed is not None and state.failed.reason == "SourceDeleted"


def test_a_source_replaced_by_a_new_run_of_the_same_name_fails_the_run() -> None:
    seen = SourceStatus(run="sft", uid="uid-old")
    state = resolve(waiting_run(recorded=seen), source("Succeeded", 10, uid="uid-new"), lookup=no_runs)
    assert state.failed is not None and state.failed.reason == "SourceReplaced"
    assert "uid-old" in state.failed.message and "uid-new" in state.failed.message


def test_a_recorded_lineage_never_changes_and_survives_the_sources_deletion() -> None:
    recorded = SourceStatus(run="sft", uid="uid-sft", step=30, uri=f"{CKPT}/{NS}/sft/uid-sft/global_step_30")
    state = resolve(waiting_run(recorded=recorded), None, lookup=no_runs)
    assert state.ready and state.source == recorded


def test_a_source_without_checkpoints_or_on_another_s3_endpoint_can_never_be_used() -> None:
    bare = source("Running")
    del bare["spec"]["checkpoints"]
    state = resolve(waiting_run(), bare, lookup=no_runs)
    assert state.failed is not None and state.failed.reason == "SourceKeepsNoCheckpoints"
    elsewhere = source("Succeeded", 10, storage={"endpoint": "http://minio.other:9000"})
    state = resolve(waiting_run(), elsewhere, lookup=no_runs)
    assert state.failed is not None and state.failed.reason == "SourceStorageMismatch"
    assert "http://minio.other:9000" in state.failed.message


def test_runs_that_wait_on_each_other_fail_instead_of_waiting_forever() -> None:
    loop_back = source("Pending")
    loop_back["spec"]["model"] = {"fromRun": {"name": "grpo"}}
    state = resolve(waiting_run(), loop_back, lookup=lambda name: loop_back if name == "sft" else None)
    assert state.failed is not None and state.failed.reason == "SourceCycle"
    assert "grpo -> sft -> grpo" in state.failed.message


def test_waiters_are_found_by_their_source_and_forgotten_when_done() -> None:
    waiters = SourceWaiters()
    waiters.wait("ns/grpo", "ns/sft")
    waiters.wait("ns/eval", "ns/sft")
    waiters.wait("ns/other", "ns/base")
    assert waiters.dependents("ns/sft") == ["ns/eval", "ns/grpo"]
    waiters.done("ns/grpo")
    assert waiters.dependents("ns/sft") == ["ns/eval"]


# ------------------------------------------------------------------------------------ the state machine


def observe(state: SourceState, **extra: Any) -> Observed:
    return Observed(generation=1, suspend=False, queued=False, now=NOW, source=state, **extra)


def condition(status: Any, kind: str) -> Any:
    return next(c for c in status.conditions if c.type == kind)


def test_a_waiting_run_is_pending_and_its_condition_names_the_source() -> None:
    state = resolve(waiting_run(), source("Running", 20), lookup=no_runs)
    update = calculate_status(observe(state), waiting_run().status)
    status = update.status
    assert status.phase == RunPhase.PENDING
    ready = condition(status, "SourceReady")
    assert (ready.status, ready.reason) == ("False", "WaitingForSource")
    assert "run 'sft'" in ready.message
    assert status.message == ready.message
    assert status.source == SourceStatus(run="sft", uid="uid-sft")
    assert {k: v for k, v in update.changes["source"].items() if v is not None} == {"run": "sft", "uid": "uid-sft"}


def test_a_failed_source_makes_the_run_failed_with_a_warning_event() -> None:
    state = resolve(waiting_run(), source("Failed", message="boom"), lookup=no_runs)
    update = calculate_status(observe(state), waiting_run().status)
    assert update.status.phase == RunPhase.FAILED
    assert condition(update.status, "Failed").reason == "SourceFailed"
    assert condition(update.status, "SourceReady").status == "False"
    assert update.event is not None and update.event.type == "Warning"
    assert update.status.completion_time == NOW


def test_a_resolved_source_is_recorded_before_anything_launches() -> None:
    state = resolve(waiting_run(), source("Succeeded", 30), lookup=no_runs, marker=Marker(30))
    first = calculate_status(observe(state), waiting_run().status).status
    assert (first.phase, condition(first, "SourceReady").status) == (RunPhase.PENDING, "True")
    assert "checkpoint step 30 of run 'sft'" in (first.message or "")
    assert first.source is not None and first.source.uri == f"{CKPT}/{NS}/sft/uid-sft/global_step_30"
    # The next pass finds it recorded: the run goes on to create its RayJob.
    again = calculate_status(observe(state), first).status
    assert again.conditions[0].type == "Valid"
    assert "creating the RayJob" in (again.message or "")


def test_a_final_checkpoint_is_the_one_the_sources_marker_names_not_its_status() -> None:
    # The source's last status patch was lost: status says step 20, its marker in S3 names step 30.
    asked = resolve(waiting_run(), source("Succeeded", 20), lookup=no_runs)
    assert asked.waiting is not None and asked.waiting.reason == "ReadingSourceMarker"
    final = resolve(waiting_run(), source("Succeeded", 20), lookup=no_runs, marker=Marker(30))
    assert final.source.step == 30 and final.source.uri == f"{CKPT}/{NS}/sft/uid-sft/global_step_30"
    unreadable = resolve(waiting_run(), source("Succeeded", 20), lookup=no_runs, marker=Marker(None, "EndpointError"))
    assert unreadable.waiting is not None and unreadable.waiting.reason == "SourceMarkerUnreadable"
    assert f"{CKPT}/{NS}/sft/uid-sft/latest" in unreadable.waiting.message
    none = resolve(waiting_run(), source("Succeeded", 20), lookup=no_runs, marker=Marker(None))
    assert none.failed is not None and none.failed.reason == "SourceEnded"


def dependent(name: str, *, step: int | None = 10, uid: str = "uid-sft", **status: Any) -> dict[str, Any]:
    body = waiting_run("latest").model_dump(mode="json", by_alias=True)
    body["metadata"].update(name=name, uid=f"uid-{name}")
    if step is not None:
        body["status"]["source"] = {"run": "sft", "uid": uid, "step": step, "uri": f"{CKPT}/x/global_step_{step}"}
    body["status"].update(status)
    return body


def test_a_source_pins_what_its_dependents_recorded_until_they_have_a_checkpoint_of_their_own() -> None:
    from loka_operator.lineage import pins_of

    sft = TrainingRun.model_validate(source("Running", 30))
    runs = [
        dependent("waits"),  # queued in Kueue with step 10 recorded: pinned
        dependent("later", step=20),
        dependent("resolving", step=None),  # nothing recorded yet: nothing to pin
        dependent("trains", checkpoint={"step": 3, "uri": "s3://x/global_step_3"}),  # has its own: released
        dependent("ended", phase="Failed"),
        dependent("of-an-older-sft", uid="uid-old"),  # recorded a deleted source of the same name
        {**dependent("deleting"), "metadata": {**dependent("deleting")["metadata"], "deletionTimestamp": "now"}},
        source("Running", 30),  # the source itself
    ]
    pins = pins_of(sft, runs)
    assert [(p.step, p.run, p.uid) for p in pins] == [(10, "waits", "uid-waits"), (20, "later", "uid-later")]
    update = calculate_status(Observed(1, False, False, NOW, pins=tuple(pins)), sft.status)
    assert [p.step for p in update.status.pins] == [10, 20]
    assert update.changes["pins"] == [{"step": 10, "run": "waits", "uid": "uid-waits"},
                                      {"step": 20, "run": "later", "uid": "uid-later"}]  # fmt: skip
