"""The trl engine's agent loop: episodes in the real MCP env, the environment's replies masked, TRL GRPO on CPU."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loka_trainer.agents.environment import AgentSettings, Episode
from loka_trainer.agents.mcp_client import ServerConfig
from loka_trainer.agents.trl_loop import EpisodeRunner, Trajectory, mcp_rollout_func, parse_hermes, prompt_key
from loka_trainer.tiny import IM_END, build_tiny_model, build_tokenizer
from tests.unit.agents.conftest import McpEnv


def settings(env: McpEnv, **overrides: Any) -> AgentSettings:
    server = ServerConfig("env", env.url, {"Authorization": "Bearer ${ENV_API_KEY}"}, timeout_seconds=5)
    base: dict[str, Any] = {"servers": (server,), "variables": ("ENV_API_KEY",), "allowed_hosts": ("127.0.0.1",),
                            "allowed_tools": ("add",), "max_turns": 4, "system_prompt": "Use add."}  # fmt: skip
    return AgentSettings(**{**base, **overrides})


def scripted(tokenizer: Any, turns: list[str]) -> Any:
    calls = iter(turns)

    def generate(prompt_ids: list[int], budget: int) -> tuple[list[int], list[float]]:
        ids = tokenizer.encode(next(calls) + IM_END)[:budget]
        return ids, [-0.5] * len(ids)

    return generate


def test_parse_hermes_counts_calls_that_do_not_parse() -> None:
    calls, malformed = parse_hermes('<tool_call>{"name": "add", "arguments": {"n": 1}}</tool_call><tool_call>{oops}')
    assert [c.name for c in calls] == ["add"] and malformed == 1


def test_an_episode_masks_the_environments_replies(mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV_API_KEY", mcp_env.token)
    tokenizer = build_tokenizer()
    runner = EpisodeRunner(settings(mcp_env), tokenizer, max_completion_tokens=400)
    info = {"setup_tool": json.dumps({"name": "setup", "arguments": {"target": 4}})}
    call = '<tool_call>{"name": "add", "arguments": {"n": 4}}</tool_call>'
    trajectory, episode = asyncio.run(
        runner.run([{"role": "user", "content": "Reach 4"}], info, scripted(tokenizer, [call, "done"]))
    )
    assert isinstance(trajectory, Trajectory) and isinstance(episode, Episode)
    env_text = tokenizer.decode(
        [t for t, m in zip(trajectory.completion_ids, trajectory.env_mask, strict=True) if not m]
    )
    model_text = tokenizer.decode([t for t, m in zip(trajectory.completion_ids, trajectory.env_mask, strict=True) if m])
    assert "<tool_response>counter=4</tool_response>" in env_text and "counter=4" not in model_text
    assert "done" in model_text
    prompt = tokenizer.decode(trajectory.prompt_ids)
    assert "Use add." in prompt and '"name": "add"' in prompt and '"name": "setup"' not in prompt
    stats = episode.stats
    assert stats.task_completion == 1.0 and stats.final_answer and (stats.tool_attempts, stats.tool_successes) == (1, 1)
    assert len(trajectory.logprobs) == len(trajectory.completion_ids) == len(trajectory.env_mask)


def test_trl_grpo_runs_a_step_with_mcp_episodes_on_cpu(
    mcp_env: McpEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    from loka_trainer.engines.trl import trl_reward
    from loka_trainer.rewards import compose

    monkeypatch.setenv("ENV_API_KEY", mcp_env.token)
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    model_dir = build_tiny_model(tmp_path / "model")
    prompts = [[{"role": "user", "content": f"Reach {n}"}] for n in (3, 5)]
    tasks = {prompt_key(p): {"setup_tool": json.dumps({"name": "setup", "arguments": {"target": n}})}
             for p, n in zip(prompts, (3, 5), strict=True)}  # fmt: skip
    data = datasets.Dataset.from_list([{"prompt": p, "ground_truth": "", "data_source": "mcp/env"} for p in prompts])
    logged: dict[str, float] = {}
    reward = trl_reward(compose.compute_score, samples_per_prompt=2)
    config = GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=24, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", beta=0.0,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    before = mcp_env.stats()
    trainer = GRPOTrainer(
        model=str(model_dir), reward_funcs=[reward], args=config, train_dataset=data,
        rollout_func=mcp_rollout_func(settings(mcp_env), tasks, max_completion_tokens=24),
    )  # fmt: skip
    trainer.train()
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items() if isinstance(v, int | float)}
    after = mcp_env.stats()
    # One session and one evaluate per completion: 2 prompts x 2 samples.
    assert after["calls"]["evaluate"] - before["calls"].get("evaluate", 0) == 4
    assert after["sessions_closed"] - before["sessions_closed"] == 4
    assert "env/tool_calls/mean" in logged and "reward/task_completion/mean" in logged
    assert "reward/total/std" in logged
    assert logged["env/format_compliance_rate"] == 0.0  # a random model's turns run out of tokens: no answer
