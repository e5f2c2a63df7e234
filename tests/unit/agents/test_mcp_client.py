"""Loka's MCP client and episode against a real MCP server (FastMCP over streamable HTTP on a local port)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from localcluster.operator_process import free_port
from loka_trainer.agents.environment import AgentSettings, Episode, TaskTools, ToolCall, task_tools
from loka_trainer.agents.mcp_client import (
    EnvironmentFailedError,
    MCPSession,
    ServerConfig,
    ToolResult,
    find_reward,
)
from tests.unit.agents.conftest import McpEnv

AUTH = {"Authorization": "Bearer ${ENV_API_KEY}", "Mcp-Image": "org/env:latest"}


def server(env: McpEnv, **overrides: Any) -> ServerConfig:
    return ServerConfig(**{"name": "env", "url": env.url, "headers": AUTH, "timeout_seconds": 5.0, **overrides})


def settings(env: McpEnv, **overrides: Any) -> AgentSettings:
    fields: dict[str, Any] = {"servers": (server(env),), "variables": ("ENV_API_KEY",), "allowed_hosts": ("127.0.0.1",)}
    return AgentSettings(**{**fields, **overrides})


def secret(env: McpEnv) -> dict[str, str]:
    return {"ENV_API_KEY": env.token}


def test_headers_are_resolved_from_the_environment_at_connect_time(mcp_env: McpEnv) -> None:
    async def run() -> list[str]:
        session = MCPSession(server(mcp_env), environ=secret(mcp_env), variables=["ENV_API_KEY"])
        tools = await session.open()
        await session.close()
        return [t.name for t in tools]

    before = mcp_env.stats()
    assert set(asyncio.run(run())) >= {"setup", "evaluate", "add", "slow", "fail", "inspect"}
    after = mcp_env.stats()
    assert after["authorized"] > before["authorized"]
    assert after["unauthorized"] == before["unauthorized"]
    assert "org/env:latest" in after["images"]


def test_a_wrong_or_undeclared_secret_fails_the_environment_without_quoting_it(mcp_env: McpEnv) -> None:
    async def open_with(environ: dict[str, str], variables: list[str]) -> None:
        session = MCPSession(server(mcp_env), environ=environ, variables=variables)
        await session.open()

    with pytest.raises(EnvironmentFailedError) as wrong:
        asyncio.run(open_with({"ENV_API_KEY": "not-the-token"}, ["ENV_API_KEY"]))
    assert "not-the-token" not in str(wrong.value)
    assert mcp_env.stats()["unauthorized"] >= 1
    # A header may only use the run's declared variables: a task row cannot read AWS keys into a header.
    with pytest.raises(EnvironmentFailedError, match=r"ENV_API_KEY\} is not one of environment.secretVariables"):
        asyncio.run(open_with(secret(mcp_env), ["OTHER"]))


def test_a_refused_connection_is_an_environment_failure() -> None:
    async def run() -> None:
        dead = ServerConfig("env", f"http://127.0.0.1:{free_port()}/mcp", connect_timeout_seconds=5)
        await MCPSession(dead, environ={}).open()

    with pytest.raises(EnvironmentFailedError, match="ConnectError"):
        asyncio.run(run())


def test_an_episode_hides_lifecycle_tools_runs_setup_calls_and_evaluates(mcp_env: McpEnv) -> None:
    task = TaskTools(setup=(ToolCall("setup", {"target": 5}),))

    async def run() -> tuple[list[str], list[ToolResult], float, Episode]:
        async with Episode(settings(mcp_env), task, environ=secret(mcp_env)) as episode:
            names = [t.name for t in episode.tools]
            await episode.setup()
            results = [
                await episode.call(ToolCall("add", {"n": 2})),
                await episode.call(ToolCall("add", {"n": 3})),
                await episode.call(ToolCall("fail", {"reason": "boom"})),
                await episode.call(ToolCall("evaluate", {})),  # hidden from the model: unknown to it
            ]
            reward = await episode.evaluate()
        return names, results, reward, episode

    before = mcp_env.stats()
    names, results, reward, episode = asyncio.run(run())
    after = mcp_env.stats()
    assert "setup" not in names and "evaluate" not in names and "add" in names
    assert results[1].text == "counter=5"
    assert results[2].is_error and "boom" in results[2].text  # the tool's error, as text for the model
    assert results[3].is_error and "unknown tool 'evaluate'" in results[3].text
    assert reward == 1.0
    stats = episode.stats
    assert (stats.tool_attempts, stats.tool_successes, stats.tool_errors) == (4, 2, 2)
    assert stats.setup_ok and stats.evaluate_ok and not stats.env_error and stats.session_seconds > 0
    # One session, opened and ended on the server (DELETE), one evaluate call.
    assert after["sessions_opened"] - before["sessions_opened"] == 1
    assert after["sessions_closed"] - before["sessions_closed"] == 1
    assert after["calls"]["evaluate"] - before["calls"].get("evaluate", 0) == 1


def test_a_call_past_its_timeout_is_a_tool_error_and_the_session_goes_on(mcp_env: McpEnv) -> None:
    async def run() -> tuple[ToolResult, ToolResult]:
        async with Episode(settings(mcp_env, servers=(server(mcp_env, timeout_seconds=0.5),)),
                           environ=secret(mcp_env)) as episode:  # fmt: skip
            slow = await episode.call(ToolCall("slow", {"seconds": 3}))
            after = await episode.call(ToolCall("add", {"n": 1}))
        return slow, after

    slow, after = asyncio.run(run())
    assert slow.is_error and slow.timed_out and "timed out after 0.5 s" in slow.text
    assert after.text == "counter=1"


def test_a_failing_setup_is_an_environment_failure(mcp_env: McpEnv) -> None:
    async def run() -> Episode:
        episode = Episode(settings(mcp_env), TaskTools(setup=(ToolCall("setup", {"target": 3}),)),
                          environ=secret(mcp_env))  # fmt: skip
        async with episode:
            await episode.setup()
        return episode

    mcp_env.control(fail_setup_every=1)
    try:
        with pytest.raises(EnvironmentFailedError, match="injected"):
            asyncio.run(run())
    finally:
        mcp_env.control(fail_setup_every=0)


def test_sessions_per_worker_are_capped(mcp_env: McpEnv) -> None:
    async def run() -> int:
        config = server(mcp_env, max_sessions=2)
        open_now = peak = 0

        async def one() -> None:
            nonlocal open_now, peak
            session = MCPSession(config, environ=secret(mcp_env), variables=["ENV_API_KEY"])
            await session.open()
            open_now += 1
            peak = max(peak, open_now)
            await session.call("slow", {"seconds": 0.3})
            open_now -= 1
            await session.close()

        await asyncio.gather(*(one() for _ in range(6)))
        return peak

    assert asyncio.run(run()) == 2


def test_nested_schemas_reach_the_model_intact(mcp_env: McpEnv) -> None:
    async def run() -> dict[str, Any]:
        async with Episode(settings(mcp_env), environ=secret(mcp_env)) as episode:
            return next(t for t in episode.tools if t.name == "inspect").openai_schema()

    schema = asyncio.run(run())["function"]["parameters"]
    assert schema["properties"]["filters"]["items"] == {"$ref": "#/$defs/Filter"}
    assert schema["$defs"]["Filter"]["properties"]["value"]["anyOf"] == [{"type": "string"}, {"type": "integer"}]
    assert schema["properties"]["mode"]["enum"] == ["any", "all"]


@pytest.mark.parametrize(
    ("structured", "text", "reward"),
    [
        ({"reward": 0.5}, "", 0.5),
        ({"grade": 1}, "", 1.0),
        ({"subscores": {"a": 1.0, "b": 0.5}, "weights": {"a": 0.5, "b": 0.5}}, "", 0.75),
        (None, json.dumps({"score": 0.25}), 0.25),
        ({"result": "ok"}, "no reward here", None),
    ],
)
def test_find_reward_reads_huds_shapes(structured: Any, text: str, reward: float | None) -> None:
    assert find_reward(ToolResult(text, structured=structured)) == reward


def test_task_rows_may_only_point_at_allowed_hosts(mcp_env: McpEnv) -> None:
    row = {"mcp_config": json.dumps({"env": {"url": "http://169.254.169.254/mcp"}})}
    with pytest.raises(ValueError, match=r"mcp_config.env.url: 'http://169.254.169.254/mcp' is not on an allowed host"):
        task_tools(row, settings(mcp_env))
    allowed = {
        "mcp_config": json.dumps({"env": {"url": mcp_env.url, "headers": {"Mcp-Image": "org/other:2"}}}),
        "setup_tool": json.dumps({"name": "setup", "arguments": {"target": 4}}),
        "evaluate_tool": json.dumps([{"name": "evaluate", "arguments": {"target": 4}}]),
    }
    tools = task_tools(allowed, settings(mcp_env))
    assert tools.servers is not None and tools.servers[0].headers["Mcp-Image"] == "org/other:2"
    assert tools.servers[0].headers["Authorization"] == "Bearer ${ENV_API_KEY}"  # still a reference
    assert tools.setup == (ToolCall("setup", {"target": 4}),)
    assert tools.evaluate == (ToolCall("evaluate", {"target": 4}),)
