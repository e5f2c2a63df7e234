"""`loka eval`: an Evaluation's figures as a user reads them, and a bad manifest refused before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from loka_api.evaluation import Evaluation
from loka_cli.evaluations import describe, table
from loka_client import InvalidRunError
from loka_client.evaluations import checked_evaluation
from loka_client.resources import parse_manifest
from tests.unit.api.test_evaluation_kind import MANIFEST

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
STATUS = {
    "phase": "Succeeded",
    "steps": [2, 4],
    "samples": 64,
    "samplesJudged": 62,
    "preferences": 20,
    "agreement": 0.75,
    "tokens": 9100,
    "judges": [
        {"name": "strict", "judged": 62, "parseRate": 0.97, "errorRate": 0.03, "tokens": 5000},
        {"name": "lenient", "judged": 60, "parseRate": 1.0, "errorRate": 0.0, "tokens": 4100},
    ],
    "preferencesURI": "s3://loka/evals/eval-1/preferences.jsonl",
}


def evaluation() -> Evaluation:
    meta = {**MANIFEST["metadata"], "creationTimestamp": "2026-12-07T04:58:00Z"}
    return Evaluation.model_validate({**MANIFEST, "metadata": meta, "status": STATUS})


def test_the_table_shows_the_printer_columns() -> None:
    header, row = table([evaluation()], now=NOW).splitlines()
    assert header.split() == ["NAME", "PHASE", "RUN", "SAMPLES", "AGREEMENT", "PAIRS", "AGE"]
    assert row.split() == ["eval-1", "Succeeded", "grpo-1", "62", "0.75", "20", "2m00s"]


def test_describe_gives_each_judges_parse_and_error_rates_and_where_the_pairs_are() -> None:
    text = describe(evaluation())
    assert "62 of 64 judged (steps 2, 4)" in text
    strict = next(line for line in text.splitlines() if "strict" in line).split()
    assert strict == ["strict", "62", "97%", "3%", "5000"]
    assert "20 -> s3://loka/evals/eval-1/preferences.jsonl" in text


def test_a_bad_manifest_is_refused_naming_the_field_before_anything_is_sent() -> None:
    bad = {**MANIFEST, "spec": {**MANIFEST["spec"], "aggregate": "mode"}}
    with pytest.raises(InvalidRunError, match="aggregate") as refused:
        checked_evaluation(bad, None, "eval.yaml")
    assert refused.value.field is not None and "aggregate" in refused.value.field
    with pytest.raises(InvalidRunError, match="kind is 'TrainingRun'"):
        checked_evaluation({**MANIFEST, "kind": "TrainingRun"}, None, "eval.yaml")
    with pytest.raises(InvalidRunError, match="does not match --namespace 'team-b'"):
        checked_evaluation(MANIFEST, "team-b", "eval.yaml")
    unnamed = {**MANIFEST, "metadata": {"name": "eval-1"}}
    assert checked_evaluation(unnamed, "team-b", "eval.yaml")["metadata"]["namespace"] == "team-b"


def test_the_evaluation_is_picked_from_a_file_that_holds_the_whole_cycle() -> None:
    text = (REPO / "examples" / "cycle" / "evaluation-cycle.yaml").read_text()
    picked = parse_manifest(text, "evaluation-cycle.yaml", "Evaluation")
    assert picked["metadata"]["name"] == "cycle-1-eval"
    assert checked_evaluation(picked, None, "evaluation-cycle.yaml")["spec"]["rollouts"]["fromRun"] == "cycle-1-rl"
