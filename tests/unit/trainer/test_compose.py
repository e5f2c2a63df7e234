"""Rewards as named, weighted components: the default agent rubric, custom functions, stable keys, per-step stats."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from loka_api import TrainingRunSpec
from loka_api.models import RewardComponentKind
from loka_api.recipes.grpo import rubric_json
from loka_api.render import StagedPaths, compose_verl_config, render_verl_overrides
from loka_trainer.agents.episode import EPISODE_KEY, EpisodeStats, environment_metrics
from loka_trainer.rewards import compose
from loka_trainer.rewards.compose import (
    COMPONENT_KINDS,
    ComponentScore,
    RewardComponent,
    RewardSample,
    Rubric,
    component_stats,
    compute_score,
)


def episode(**fields: Any) -> dict[str, Any]:
    return {EPISODE_KEY: EpisodeStats(**fields).as_record()}


def score(extra: dict[str, Any], rubric: str | None = None, solution: str = "done") -> dict[str, float]:
    return asyncio.run(compute_score("mcp/env", solution, None, extra, rubric=rubric))


def test_default_rubric_weighs_task_completion_tool_execution_and_format() -> None:
    result = score(episode(task_completion=1.0, tool_attempts=4, tool_successes=2, final_answer=True))
    assert result == {
        "score": pytest.approx(0.8 * 1.0 + 0.1 * 0.5 + 0.1 * 1.0),
        "task_completion": 1.0,
        "tool_execution": 0.5,
        "format_compliance": 1.0,
        "env_error": 0.0,
    }


def test_malformed_calls_lower_format_and_no_answer_scores_no_format() -> None:
    malformed = score(episode(tool_attempts=4, tool_successes=3, malformed_calls=1, final_answer=True))
    assert malformed["format_compliance"] == pytest.approx(0.75)
    assert malformed["tool_execution"] == pytest.approx(1.0)  # 3 of the 3 calls that parsed
    unanswered = score(episode(tool_attempts=2, tool_successes=2, final_answer=False))
    assert unanswered["format_compliance"] == 0.0


def test_same_keys_on_success_env_error_and_no_episode() -> None:
    success = score(episode(task_completion=1.0, final_answer=True, evaluate_ok=True))
    failed = score(episode(task_completion=1.0, tool_attempts=1, tool_successes=1, env_error=True))
    nothing = score({})
    assert list(success) == list(failed) == list(nothing) == list(Rubric.default().keys())
    # The `zero` failure policy: the environment failed, the sample scores nothing and is counted.
    assert failed["score"] == 0.0
    assert failed["env_error"] == 1.0
    assert failed["task_completion"] == 0.0


def test_a_function_component_and_custom_weights_from_the_specs_json() -> None:
    spec = TrainingRunSpec.model_validate(
        {
            "image": "i",
            "model": {"uri": "hf://o/m"},
            "data": {"train": "s3://b/t.parquet"},
            "reward": {
                "components": [
                    {"name": "task_completion", "kind": "environment", "weight": 0.5},
                    {"name": "answer", "kind": "function", "weight": 0.5,
                     "function": "loka_trainer.rewards.gsm8k:compute_score"},
                ]
            },
        }
    )  # fmt: skip
    assert spec.reward is not None and spec.reward.components is not None
    rubric = rubric_json(spec.reward.components)
    result = score({**episode(task_completion=1.0)}, rubric=rubric, solution="<answer>7</answer>")
    assert list(result) == ["score", "task_completion", "answer", "env_error"]
    assert result["answer"] == 0.0  # no ground truth matches
    right = asyncio.run(compute_score("s", "<answer>7</answer>", "7", episode(task_completion=0.0), rubric=rubric))
    assert right["score"] == pytest.approx(0.5)


def test_an_async_component_with_extras_always_reports_them() -> None:
    class Slow(RewardComponent):
        kind = "test-slow"
        extra_keys: ClassVar[tuple[str, ...]] = ("ok", "latency_s")

        async def score(self, sample: RewardSample) -> ComponentScore:
            await asyncio.sleep(0)
            if "fail" in sample.solution:
                return ComponentScore(0.0)  # a timeout: no extras filled in
            return ComponentScore(1.0, {"ok": 1.0, "latency_s": 0.25})

    rubric = Rubric([Slow("judge", 2.0)])
    good = asyncio.run(rubric.score(RewardSample("s", "fine")))
    bad = asyncio.run(rubric.score(RewardSample("s", "fail")))
    assert good == {"score": 2.0, "judge": 1.0, "judge_ok": 1.0, "judge_latency_s": 0.25, "env_error": 0.0}
    assert list(bad) == list(good)
    assert bad["judge_ok"] == 0.0


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"name": "x", "kind": "oracle"}, ["reward.components[0].kind", "'oracle'", "environment"]),
        ({"name": "score", "kind": "environment"}, ["reward.components[0].name", "'score'"]),
        ({"name": "x", "kind": "environment", "weight": "heavy"}, ["reward.components[0].weight", "'heavy'"]),
        ({"name": "x", "kind": "environment", "url": "http://h"}, ["reward.components[0]", "url", "kind"]),
        ({"name": "x", "kind": "function", "function": "nowhere.at_all:f"}, ["function", "nowhere.at_all:f"]),
    ],
)
def test_bad_components_are_refused_naming_field_and_value(config: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError, match=r"reward\.components\[0\]") as error:
        Rubric.from_config([config])
    for word in words:
        assert word in str(error.value)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="task_completion used more than once"):
        Rubric.from_config([{"name": "task_completion", "kind": "environment"}] * 2)


def test_every_kind_the_api_accepts_is_a_registered_component() -> None:
    assert {kind.value for kind in RewardComponentKind} <= set(COMPONENT_KINDS)


def test_component_stats_give_mean_std_min_max_per_component() -> None:
    results = [
        {"score": 1.0, "task_completion": 1.0, "env_error": 0.0},
        {"score": 0.0, "task_completion": 0.0, "env_error": 1.0},
    ]
    stats = component_stats(results, ["task_completion", "env_error", "judge"])
    assert stats["reward/total/mean"] == 0.5
    assert stats["reward/total/std"] == 0.5
    assert stats["reward/task_completion/min"] == 0.0
    assert stats["reward/task_completion/max"] == 1.0
    assert stats["reward/env_error/mean"] == 0.5
    assert not any(key.startswith("reward/judge/") for key in stats)


def test_environment_metrics_over_a_steps_episodes() -> None:
    episodes = [
        EpisodeStats(tool_attempts=3, tool_successes=1, tool_errors=1, malformed_calls=1, final_answer=True,
                     setup_ok=True, evaluate_ok=True, session_seconds=2.0, assistant_turns=4),
        EpisodeStats(tool_attempts=1, tool_successes=1, final_answer=True, setup_ok=True, evaluate_ok=False,
                     env_error=True, session_seconds=4.0, assistant_turns=2),
    ]  # fmt: skip
    metrics = environment_metrics(episodes)
    assert metrics["env/tool_calls/mean"] == 2.0
    assert metrics["env/tool_parse_rate"] == 0.75
    assert metrics["env/tool_success_rate"] == pytest.approx(2 / 3)
    assert metrics["env/format_compliance_rate"] == 0.5
    assert metrics["env/setup_ok_rate"] == 1.0
    assert metrics["env/evaluate_ok_rate"] == 0.5
    assert metrics["env/error_rate"] == 0.5
    assert metrics["env/session_seconds/mean"] == 3.0
    assert environment_metrics([]) == {}


def test_a_rubric_renders_as_verls_reward_kwargs_and_composes() -> None:
    spec = TrainingRunSpec.model_validate(
        {
            "image": "i",
            "model": {"uri": "hf://o/m"},
            "data": {"train": "s3://b/t.parquet"},
            "reward": {"components": [{"name": "task_completion", "kind": "environment", "weight": 1}]},
            "resources": {"workers": 1, "gpusPerWorker": 1},
        }
    )
    paths = StagedPaths(model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"))
    config = compose_verl_config(render_verl_overrides(spec, run_name="r", namespace="n", paths=paths))
    assert config.reward.custom_reward_function.path == f"pkg://{compose.__name__}"
    assert config.reward.custom_reward_function.name == "compute_score"
    text = config.reward.custom_reward_function.reward_kwargs.rubric
    assert Rubric.from_config(json.loads(text)).names == ("task_completion",)


def test_the_verl_hook_reduces_a_steps_episodes_leaving_padding_out() -> None:
    from loka_trainer.verl_hook import step_environment_metrics

    extra = [
        episode(tool_attempts=2, tool_successes=2, final_answer=True, setup_ok=True, evaluate_ok=True),
        episode(tool_attempts=4, env_error=True),  # padding: a dropped group's placeholder
        {"reward_extra_info": {"score": 1.0}},  # a row without an episode (no environment)
    ]
    metrics = step_environment_metrics(extra, [False, True, False])
    assert metrics["env/episodes"] == 1.0
    assert metrics["env/tool_calls/mean"] == 2.0
    assert metrics["env/error_rate"] == 0.0
    assert step_environment_metrics([None], [False]) == {}


def test_the_trainer_redacts_an_environments_secret_variables() -> None:
    from loka_trainer.settings import redact

    env = {"LOKA_SECRET_VARIABLES": "ENV_API_KEY", "ENV_API_KEY": "sk-env-1234"}
    assert redact("401 for Bearer sk-env-1234", env) == "401 for Bearer <ENV_API_KEY>"
