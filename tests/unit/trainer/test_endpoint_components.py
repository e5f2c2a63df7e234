"""A judge as a component of a run's spec.reward, as the GRPO recipe renders it and the trainer's rubric scores it,
against a real OpenAI-API-speaking judge on a local port: its key and rubric come from the variables the operator
gives the pods, and a judge that is down or slow zeroes its part under the same keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.judge_server import JudgeBehaviour, JudgeServer
from loka_api import contract
from loka_api.models import RewardComponent
from loka_api.recipes.grpo import rubric_json
from loka_trainer.rewards import compose
from loka_trainer.rewards import judge as judge_module

KEY = "sk-test-judge-0123"
KEYS = {"score", "grader", "grader_ok", "grader_error", "grader_latency_s", "grader_tokens", "exact", "env_error"}


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    with JudgeServer(JudgeBehaviour(api_key=KEY)) as running:
        yield running
    judge_module._CLIENTS.clear()
    compose.rubric_from_json.cache_clear()


def rubric(server: JudgeServer, **judge: Any) -> str:
    settings = {"endpoint": server.url, "model": "digits", "apiKey": {"secret": "judges", "key": "grader"}, **judge}
    components = [
        RewardComponent.model_validate({"name": "grader", "kind": "judge", "weight": 0.5, "judge": settings}),
        RewardComponent.model_validate(
            {"name": "exact", "kind": "function", "weight": 0.5, "function": f"{__name__}:exact"}
        ),
    ]
    return rubric_json(components)


def exact(data_source: str, solution: str, ground_truth: str | None, extra_info: dict[str, Any]) -> float:
    return 1.0 if solution.strip() == ground_truth else 0.0


def score(rubric_text: str, response: str) -> dict[str, float]:
    return asyncio.run(compose.compute_score("toy", response, "42", {"prompt": "What is 6*7?"}, rubric=rubric_text))


def test_a_judge_component_scores_with_the_key_and_rubric_the_pods_were_given(
    server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.reward_api_key_env("grader"), KEY)
    monkeypatch.setenv(contract.reward_rubric_env("grader"), "Grade arithmetic strictly.")
    text = rubric(server, rubric={"configMap": {"name": "rubrics", "key": "strict.md"}})

    result = score(text, "42")

    assert set(result) == KEYS
    assert (result["grader"], result["grader_ok"], result["grader_error"]) == (1.0, 1.0, 0.0)
    assert result["score"] == pytest.approx(0.5 * 1.0 + 0.5 * 1.0)
    assert server.log.systems == ["Grade arithmetic strictly."]
    assert KEY not in text  # the rubric verl carries names the Secret, never the value


def test_a_judge_that_refuses_the_key_zeroes_only_its_part(
    server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.reward_api_key_env("grader"), "sk-wrong")
    result = score(rubric(server, retries=0), "42")
    assert set(result) == KEYS
    assert (result["grader"], result["grader_ok"], result["grader_error"]) == (0.0, 0.0, 1.0)
    assert result["score"] == pytest.approx(0.5)  # the exact-match half still counts


def test_a_slow_judge_costs_at_most_its_timeout_and_scores_its_failure_score(
    server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.reward_api_key_env("grader"), KEY)
    server.set_mode("slow", delay_s=30)
    result = score(rubric(server, timeoutSeconds=1, failureScore=0.25), "41")
    assert set(result) == KEYS
    assert (result["grader"], result["grader_ok"]) == (0.25, 0.0)
    assert result["grader_latency_s"] < 5


def test_a_rubric_configmap_that_did_not_reach_the_pod_is_named(server: JudgeServer) -> None:
    text = rubric(server, rubric={"configMap": {"name": "rubrics", "key": "strict.md"}})
    with pytest.raises(
        ValueError, match=r"reward.components\[0\].*ConfigMap rubrics key strict.md.*LOKA_REWARD_RUBRIC_GRADER"
    ):
        score(text, "42")
