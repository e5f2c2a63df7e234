"""The client's typed runs and its checks of what is submitted, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from loka_api import RunPhase, TrainingRun
from loka_client import InvalidRunError, Run, RunChange
from loka_client.resources import parse_manifest
from loka_client.runs import checked_manifest
from tests.operator.conftest import run_manifest


def stored(phase: str | None = None, **status: Any) -> dict[str, Any]:
    body = run_manifest("toy", "team-a")
    body["metadata"].update({"uid": "u-1", "generation": 1, "resourceVersion": "7", "managedFields": [{"x": 1}]})
    body["status"] = {"observedGeneration": 1, **status} | ({"phase": phase} if phase else {})
    return body


def test_a_stored_run_is_typed_and_keeps_the_object_the_api_server_holds() -> None:
    run = Run.from_body(stored("Running", progress={"step": 3, "totalSteps": 10}, metrics={"rewardMean": 0.5}))
    assert isinstance(run, TrainingRun)
    assert run.phase is RunPhase.RUNNING and run.status.progress and run.status.progress.step == 3
    assert run.spec.training.batch_size == 16
    assert run.manifest["metadata"]["managedFields"] == [{"x": 1}]  # what -o yaml prints, as kubectl would
    assert not run.finished


def test_a_run_without_a_phase_yet_is_pending_and_a_terminal_one_of_an_older_generation_is_not_finished() -> None:
    assert Run.from_body(stored()).phase is RunPhase.PENDING
    old = stored("Succeeded")
    old["metadata"]["generation"] = 2  # resubmitted; the operator has not caught up
    assert not Run.from_body(old).finished
    assert Run.from_body(stored("Succeeded")).finished


def test_a_stored_run_the_models_refuse_is_named_with_its_field() -> None:
    body = stored("Running")
    body["spec"]["training"]["batchSize"] = "many"
    with pytest.raises(InvalidRunError) as caught:
        Run.from_body(body)
    assert "TrainingRun team-a/toy" in caught.value.message
    assert caught.value.field == "spec.training.batchSize"


def test_a_change_names_the_status_fields_that_moved() -> None:
    before = Run.from_body(stored("Running", progress={"step": 3}))
    after = Run.from_body(stored("Running", progress={"step": 4}, checkpoint={"step": 4, "uri": "s3://c/4"}))
    change = RunChange.between(before, after)
    assert change.changed == {"progress", "checkpoint"}
    assert not change.phase_changed
    assert RunChange.between(after, Run.from_body(stored("Succeeded"))).phase_changed
    assert not RunChange.between(after, after).changed


def test_bad_input_names_the_field_the_value_and_what_to_do() -> None:
    manifest = run_manifest("toy", "team-a")
    manifest["spec"]["training"]["learningRate"] = "fast"
    with pytest.raises(InvalidRunError) as caught:
        checked_manifest(manifest, None, "run.yaml")
    assert caught.value.field == "spec.training.learningRate"
    assert caught.value.value == "fast"
    assert caught.value.message.startswith("run.yaml: spec.training.learningRate: ")
    assert "(got 'fast')" in caught.value.message


def test_a_namespace_is_filled_in_and_a_contradicting_one_refused() -> None:
    manifest = run_manifest("toy", "team-a")
    del manifest["metadata"]["namespace"]
    assert checked_manifest(manifest, "team-b")["metadata"]["namespace"] == "team-b"
    with pytest.raises(InvalidRunError, match="does not match --namespace 'team-b'"):
        checked_manifest(run_manifest("toy", "team-a"), "team-b")


def test_a_typed_run_applies_only_the_fields_that_were_set() -> None:
    run = TrainingRun.model_validate(run_manifest("toy", "team-a"))
    manifest = checked_manifest(run, None)
    assert manifest["apiVersion"] == "loka.dev/v1alpha1" and manifest["kind"] == "TrainingRun"
    assert manifest["metadata"] == {"name": "toy", "namespace": "team-a"}
    assert manifest["spec"]["training"] == {"batchSize": 16, "samplesPerPrompt": 4}
    assert "status" not in manifest


def test_a_file_holds_exactly_one_run() -> None:
    with pytest.raises(InvalidRunError, match="expected one TrainingRun, found 0"):
        parse_manifest("kind: ConfigMap\n", "x.yaml")
    with pytest.raises(InvalidRunError, match="not valid YAML"):
        parse_manifest("a: [", "x.yaml")
