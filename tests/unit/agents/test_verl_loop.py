"""Loka's verl agent loop, driven by a scripted model through verl's own loop classes, against the real MCP env."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_api.environments import ENV_ENVIRONMENT, ENV_SYSTEM_PROMPT
from loka_api.render import StagedPaths, compose_verl_config, render_verl_overrides
from loka_trainer.agents.environment import AgentSettings
from loka_trainer.agents.episode import EPISODE_KEY, MESSAGES_KEY, EpisodeStats
from loka_trainer.rewards.compose import compute_score
from loka_trainer.tiny import IM_END, build_tokenizer
from tests.unit.agents.conftest import McpEnv

pytest.importorskip("verl")

from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from loka_trainer.agents.verl_loop import MCPAgentLoop

CALL = '<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def call(name: str, **arguments: Any) -> str:
    return CALL.format(name=name, arguments=json.dumps(arguments))


class ScriptedModel:
    """verl's server manager, answering each turn with the next scripted text (the last one repeats)."""

    def __init__(self, tokenizer: Any, turns: list[str]) -> None:
        self.tokenizer, self.turns = tokenizer, turns
        self.prompts: list[str] = []

    async def generate(self, *, request_id: str, prompt_ids: list[int], **kwargs: Any) -> TokenOutput:
        self.prompts.append(self.tokenizer.decode(prompt_ids))
        text = self.turns[min(len(self.prompts) - 1, len(self.turns) - 1)]
        return TokenOutput(token_ids=self.tokenizer.encode(text + IM_END), num_preempted=0)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def verl_config(max_turns: int = 6, response_length: int = 1024) -> Any:
    spec = TrainingRunSpec.model_validate(
        {
            "image": "i",
            "model": {"uri": "hf://o/m"},
            "data": {"train": "s3://b/t.parquet", "maxPromptLength": 8192, "maxResponseLength": response_length},
            "resources": {"workers": 1, "gpusPerWorker": 1},
            "training": {"batchSize": 2, "samplesPerPrompt": 2},
            "environment": {"servers": [{"name": "env", "url": "http://127.0.0.1/mcp"}], "maxTurns": max_turns,
                            "maxToolResponseChars": 64},
        }
    )  # fmt: skip
    paths = StagedPaths(model="m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"),
                        agent_loop_config=Path("/a.yaml"))  # fmt: skip
    return compose_verl_config(render_verl_overrides(spec, run_name="r", namespace="n", paths=paths))


def run_loop(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any, turns: list[str], *,
    max_turns: int = 6, response_length: int = 1024, on_env_error: str = "drop",
    extra_info: dict[str, Any] | None = None,
) -> tuple[Any, ScriptedModel]:  # fmt: skip
    from loka_trainer.agents.mcp_client import ServerConfig

    settings = AgentSettings(
        servers=(ServerConfig("env", mcp_env.url, {"Authorization": "Bearer ${ENV_API_KEY}"}, timeout_seconds=5),),
        variables=("ENV_API_KEY",), allowed_hosts=("127.0.0.1",), max_tool_response_chars=64, on_env_error=on_env_error,
    )  # fmt: skip
    monkeypatch.setenv(ENV_ENVIRONMENT, settings.to_json())
    monkeypatch.setenv(ENV_SYSTEM_PROMPT, "Reach the target with add.")
    monkeypatch.setenv("ENV_API_KEY", mcp_env.token)
    config = verl_config(max_turns, response_length)
    model = ScriptedModel(tokenizer, turns)
    info = extra_info or {"setup_tool": json.dumps({"name": "setup", "arguments": {"target": 5}})}
    prompt = [{"role": "user", "content": "Reach 5."}]

    async def trajectory() -> Any:
        # As verl's AgentLoopWorker does: one loop object per trajectory, built inside the worker's event loop.
        loop = MCPAgentLoop(
            trainer_config=DictConfigWrap(config), server_manager=model, tokenizer=tokenizer, processor=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data), hf_model_type="qwen2",
        )  # fmt: skip
        return await loop.run({"temperature": 1.0}, raw_prompt=prompt, extra_info=info)

    return asyncio.run(trajectory()), model


def masked_text(tokenizer: Any, output: Any, value: int) -> str:
    ids = [t for t, m in zip(output.response_ids, output.response_mask, strict=True) if m == value]
    return str(tokenizer.decode(ids))


def test_an_episode_runs_setup_tools_and_evaluate_with_tool_tokens_masked(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    before = mcp_env.stats()
    output, model = run_loop(mcp_env, monkeypatch, tokenizer, [call("add", n=2), call("add", n=3), "Done: 5"])
    after = mcp_env.stats()
    stats = EpisodeStats.from_record(output.extra_fields[EPISODE_KEY])
    assert stats is not None
    assert (stats.tool_attempts, stats.tool_successes, stats.malformed_calls) == (2, 2, 0)
    assert stats.setup_ok and stats.evaluate_ok and stats.final_answer and stats.task_completion == 1.0
    assert stats.assistant_turns == 3
    # The model's own tokens train (mask 1); the environment's replies do not (mask 0).
    assert "counter=5" in masked_text(tokenizer, output, 0)
    assert "counter=5" not in masked_text(tokenizer, output, 1)
    assert "Done: 5" in masked_text(tokenizer, output, 1)
    # The system prompt and the tools' raw JSON Schemas reach the chat template; lifecycle tools do not.
    first_prompt = model.prompts[0]
    assert "Reach the target with add." in first_prompt
    assert '"$defs"' in first_prompt and '"name": "add"' in first_prompt
    assert '"name": "evaluate"' not in first_prompt and '"name": "setup"' not in first_prompt
    assert after["calls"]["evaluate"] - before["calls"].get("evaluate", 0) == 1
    assert after["sessions_closed"] - before["sessions_closed"] == 1
    messages = json.loads(output.extra_fields[MESSAGES_KEY])
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].startswith("Done: 5")
    # The reward function reads the episode from extra_info, as verl's reward manager merges it in.
    reward = asyncio.run(compute_score("mcp/env", "Done: 5", None, output.extra_fields))
    assert reward["score"] == pytest.approx(1.0)


def test_a_malformed_call_is_counted_not_dropped(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    broken = '<tool_call>{"name": "add", "arguments": {n: 5}}</tool_call>'
    output, _ = run_loop(mcp_env, monkeypatch, tokenizer, [call("add", n=5), broken])
    stats = EpisodeStats.from_record(output.extra_fields[EPISODE_KEY])
    assert stats is not None
    assert (stats.tool_attempts, stats.malformed_calls, stats.tool_successes) == (2, 1, 1)
    assert not stats.final_answer  # the episode ended on a call that did not parse
    assert stats.format_compliance == 0.0


def test_the_turn_limit_ends_an_episode_without_an_answer(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    output, model = run_loop(mcp_env, monkeypatch, tokenizer, [call("add", n=1)], max_turns=3)
    stats = EpisodeStats.from_record(output.extra_fields[EPISODE_KEY])
    assert stats is not None
    assert len(model.prompts) == 3 and stats.assistant_turns == 3
    assert stats.tool_attempts == 2  # the third turn's call is cut by the limit
    assert not stats.final_answer and stats.evaluate_ok
    assert stats.task_completion == pytest.approx(1 - 3 / 5)


def test_long_tool_output_is_truncated_and_the_response_budget_holds(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    output, _ = run_loop(mcp_env, monkeypatch, tokenizer, [call("read", size=5000)], response_length=300)
    stats = EpisodeStats.from_record(output.extra_fields[EPISODE_KEY])
    assert stats is not None
    assert len(output.response_ids) <= 300 and len(output.response_mask) == len(output.response_ids)
    tool_text = masked_text(tokenizer, output, 0)
    assert "...(truncated)..." in tool_text and len(tool_text) < 400  # 64 of the 5000 characters reach the model
    assert stats.tool_successes >= 1 and not stats.final_answer  # the response budget ran out first


def test_an_environment_that_fails_drops_or_scores_zero(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    from loka_trainer.agents.mcp_client import EnvironmentFailedError

    mcp_env.control(fail_setup_every=1)
    try:
        with pytest.raises(EnvironmentFailedError, match="injected"):
            run_loop(mcp_env, monkeypatch, tokenizer, ["Done"])
        output, _ = run_loop(mcp_env, monkeypatch, tokenizer, ["Done"], on_env_error="zero")
    finally:
        mcp_env.control(fail_setup_every=0)
    stats = EpisodeStats.from_record(output.extra_fields[EPISODE_KEY])
    assert stats is not None and stats.env_error and not stats.evaluate_ok
    reward = asyncio.run(compute_score("mcp/env", "Done", None, output.extra_fields))
    assert reward["score"] == 0.0 and reward["env_error"] == 1.0


def test_a_row_pointing_at_a_host_not_allowed_is_refused(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    row = {"mcp_config": json.dumps({"env": {"url": "http://10.0.0.1:80/mcp"}})}
    with pytest.raises(ValueError, match="not on an allowed host"):
        run_loop(mcp_env, monkeypatch, tokenizer, ["Done"], extra_info=row)
