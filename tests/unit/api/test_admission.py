"""The trainer-status policy the chart installs is exactly what the generator writes from the contract."""

from __future__ import annotations

from pathlib import Path

from loka_api.admission import CHART_TEMPLATE, operator_only_status_fields, policy_manifests, render_chart_template
from loka_api.contract import OPERATOR_STATUS_FIELDS, TRAINER_STATUS_FIELDS

REPO = Path(__file__).resolve().parents[3]


def test_committed_chart_template_equals_generator_output() -> None:
    committed = (REPO / CHART_TEMPLATE).read_text(encoding="utf-8")
    assert committed == render_chart_template(), "the chart's policy is stale: run `make crds` and commit the result"


def test_every_status_field_but_the_trainers_is_guarded() -> None:
    guarded = operator_only_status_fields()
    assert set(guarded) == set(OPERATOR_STATUS_FIELDS) - set(TRAINER_STATUS_FIELDS)
    policy = policy_manifests()[0]
    checked = {v["message"].split(" ", 1)[0] for v in policy["spec"]["validations"]}
    assert checked == {f"status.{field}" for field in guarded}
