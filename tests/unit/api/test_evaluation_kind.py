"""The Evaluation kind: its generated CRD is the committed one, a manifest validates, and its spec becomes the
evaluator's plan (judges' rubrics from their mounted ConfigMap keys, API keys by variable name only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from loka_api.crd import EVALUATION_CRD_PATH, build_evaluation_crd, render_evaluation_crd_yaml
from loka_api.evaluation import Evaluation, parse_steps
from loka_trainer.evaluate import evaluation_plan
from loka_trainer.rewards.judge import DEFAULT_RUBRIC

REPO = Path(__file__).resolve().parents[3]

MANIFEST: dict[str, Any] = {
    "apiVersion": "loka.dev/v1alpha1",
    "kind": "Evaluation",
    "metadata": {"name": "eval-1", "namespace": "loka"},
    "spec": {
        "image": "ghcr.io/acme/loka:rl-train",
        "rollouts": {"fromRun": "grpo-1", "steps": "2,4"},
        "judges": [
            {"name": "strict", "endpoint": "http://vllm-judge:8000/v1", "model": "qwen3-32b",
             "rubric": {"configMap": {"name": "rubrics", "key": "strict.md"}},
             "apiKey": {"secret": "judge", "key": "key"}},
            {"name": "lenient", "endpoint": "http://gw/v1", "model": "m", "samples": 3, "temperature": 0.7},
        ],
        "aggregate": "majority",
        "output": {"uri": "s3://loka/evals/eval-1"},
    },
}  # fmt: skip


def test_the_committed_evaluation_crd_is_the_generated_one() -> None:
    assert (REPO / EVALUATION_CRD_PATH).read_text(encoding="utf-8") == render_evaluation_crd_yaml()
    columns = [c["name"] for c in build_evaluation_crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:6] == ["Phase", "Run", "Samples", "Agreement", "Pairs", "Age"]


def test_the_spec_becomes_the_evaluators_plan(tmp_path: Path) -> None:
    (tmp_path / "strict").write_text("Be strict.")
    evaluation = Evaluation.model_validate(MANIFEST)
    plan = evaluation_plan(evaluation, rollouts_uri="s3://loka/ckpt/loka/grpo-1/uid/rollouts", rubric_dir=tmp_path)
    strict, lenient = plan.judges
    assert (strict.rubric, strict.api_key_env) == ("Be strict.", "LOKA_JUDGE_API_KEY_STRICT")
    assert (lenient.rubric, lenient.api_key_env, lenient.samples) == (DEFAULT_RUBRIC, None, 3)
    assert plan.steps == [2, 4] and plan.aggregate == "majority"


def test_a_rubric_that_is_not_mounted_is_named(tmp_path: Path) -> None:
    evaluation = Evaluation.model_validate(MANIFEST)
    with pytest.raises(ValueError, match=r"judges\[strict\]\.rubric: ConfigMap rubrics key strict\.md"):
        evaluation_plan(evaluation, rollouts_uri="s3://b/r", rubric_dir=tmp_path)


@pytest.mark.parametrize(("steps", "parsed"), [("latest", "latest"), ("all", "all"), ("9,3,3", [3, 9])])
def test_steps(steps: str, parsed: object) -> None:
    assert parse_steps(steps) == parsed


def test_bad_steps_are_refused() -> None:
    bad = {**MANIFEST["spec"], "rollouts": {"fromRun": "grpo-1", "steps": "newest"}}
    with pytest.raises(ValidationError, match=r"rollouts\.steps"):
        Evaluation.model_validate({**MANIFEST, "spec": bad})
