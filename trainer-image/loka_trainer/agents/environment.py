"""One episode in the run's MCP environment: open a session per server, list the tools the model may see, run the
task's setup, carry the model's tool calls, evaluate, close. Both agent loops (verl's and the trl engine's) drive it.

What the episode did is counted in ``EpisodeStats``. An environment that fails (connect, setup, evaluate, a session
that dies) raises ``EnvironmentFailedError`` after marking ``env_error``; the caller applies the run's failure policy
(``drop``: raise, verl drops the group; ``zero``: finish the trajectory, scored 0). A tool that fails is not an
environment failure: its error goes back to the model as text.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loka_api.environments import (
    ENV_ENVIRONMENT,
    ENV_SYSTEM_PROMPT,
    EnvironmentSpec,
    FailurePolicy,
    allowed_host_patterns,
    host_allowed,
    server_url,
)
from loka_trainer.agents.episode import EpisodeStats
from loka_trainer.agents.mcp_client import (
    EnvironmentFailedError,
    MCPSession,
    ServerConfig,
    ToolResult,
    ToolSpec,
    find_reward,
)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSettings:
    """The run's environment as the agent loops use it (from ``LOKA_ENVIRONMENT``; no secret in it)."""

    servers: tuple[ServerConfig, ...]
    variables: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    setup_tool: str | None = "setup"
    evaluate_tool: str | None = "evaluate"
    allowed_tools: tuple[str, ...] = ()
    max_turns: int = 16
    max_parallel_calls: int = 1
    max_tool_response_chars: int = 4096
    tool_call_format: str = "hermes"
    on_env_error: str = FailurePolicy.DROP.value
    system_prompt: str | None = None

    @classmethod
    def from_spec(cls, environment: EnvironmentSpec, *, run: str, namespace: str) -> AgentSettings:
        servers = tuple(
            ServerConfig(
                name=s.name,
                url=server_url(s, run=run, namespace=namespace),
                headers=dict(s.headers),
                timeout_seconds=s.timeout_seconds,
                connect_timeout_seconds=s.connect_timeout_seconds,
                max_sessions=s.max_sessions,
            )
            for s in environment.servers
        )
        return cls(
            servers=servers,
            variables=tuple(v.name for v in environment.secret_variables),
            allowed_hosts=tuple(allowed_host_patterns(environment, run=run, namespace=namespace)),
            setup_tool=environment.lifecycle_tools.setup,
            evaluate_tool=environment.lifecycle_tools.evaluate,
            allowed_tools=tuple(environment.allowed_tools),
            max_turns=environment.max_turns,
            max_parallel_calls=environment.max_parallel_calls,
            max_tool_response_chars=environment.max_tool_response_chars,
            tool_call_format=environment.tool_call_format.value,
            on_env_error=environment.on_env_error.value,
        )

    def to_json(self) -> str:
        record = {
            "servers": [
                {"name": s.name, "url": s.url, "headers": dict(s.headers), "timeoutSeconds": s.timeout_seconds,
                 "connectTimeoutSeconds": s.connect_timeout_seconds, "maxSessions": s.max_sessions}
                for s in self.servers
            ],
            "variables": list(self.variables),
            "allowedHosts": list(self.allowed_hosts),
            "setupTool": self.setup_tool,
            "evaluateTool": self.evaluate_tool,
            "allowedTools": list(self.allowed_tools),
            "maxTurns": self.max_turns,
            "maxParallelCalls": self.max_parallel_calls,
            "maxToolResponseChars": self.max_tool_response_chars,
            "toolCallFormat": self.tool_call_format,
            "onEnvError": self.on_env_error,
        }  # fmt: skip
        return json.dumps(record, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, system_prompt: str | None = None) -> AgentSettings:
        record = json.loads(text)
        return cls(
            servers=tuple(ServerConfig.from_record(s) for s in record["servers"]),
            variables=tuple(record.get("variables", ())),
            allowed_hosts=tuple(record.get("allowedHosts", ())),
            setup_tool=record.get("setupTool"),
            evaluate_tool=record.get("evaluateTool"),
            allowed_tools=tuple(record.get("allowedTools", ())),
            max_turns=int(record.get("maxTurns", 16)),
            max_parallel_calls=int(record.get("maxParallelCalls", 1)),
            max_tool_response_chars=int(record.get("maxToolResponseChars", 4096)),
            tool_call_format=str(record.get("toolCallFormat", "hermes")),
            on_env_error=str(record.get("onEnvError", FailurePolicy.DROP.value)),
            system_prompt=system_prompt,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if environ is None else environ
        text = env.get(ENV_ENVIRONMENT)
        if not text:
            msg = f"{ENV_ENVIRONMENT} is not set: the agent loop runs only for runs with spec.environment"
            raise RuntimeError(msg)
        return cls.from_json(text, system_prompt=env.get(ENV_SYSTEM_PROMPT) or None)

    @property
    def drops_failed_episodes(self) -> bool:
        return self.on_env_error == FailurePolicy.DROP.value


@dataclass(frozen=True)
class TaskTools:
    """A task row's own environment: its servers (``mcp_config``), setup and evaluate calls; None where it has none."""

    servers: tuple[ServerConfig, ...] | None = None
    setup: tuple[ToolCall, ...] | None = None
    evaluate: tuple[ToolCall, ...] | None = None


def _calls(value: Any, *, field_name: str) -> tuple[ToolCall, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            msg = f"{field_name}: expected {{name, arguments}} or a list of them, got {item!r:.80}"
            raise ValueError(msg)
        arguments = item.get("arguments") or {}
        if not isinstance(arguments, Mapping):
            msg = f"{field_name}.arguments: expected an object"
            raise ValueError(msg)
        calls.append(ToolCall(item["name"], dict(arguments)))
    return tuple(calls)


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def task_tools(extra_info: Mapping[str, Any] | None, settings: AgentSettings) -> TaskTools:
    """The row's mcp_config / setup_tool / evaluate_tool (JSON strings in the parquet), checked: a server URL whose
    host the run does not allow is refused (ValueError), so a dataset cannot make the trainer call anywhere else.
    """
    info = extra_info or {}
    servers = None
    config = _decoded(info.get("mcp_config"))
    if config:
        if not isinstance(config, Mapping):
            msg = "mcp_config: expected an object of servers {name: {url, headers}}"
            raise ValueError(msg)
        by_name = {s.name: s for s in settings.servers}
        resolved = []
        for name, entry in config.items():
            url = entry.get("url") if isinstance(entry, Mapping) else None
            if not isinstance(url, str):
                msg = f"mcp_config.{name}.url: missing (only servers over streamable HTTP are supported)"
                raise ValueError(msg)
            if not host_allowed(url, settings.allowed_hosts):
                msg = f"mcp_config.{name}.url: {url!r} is not on an allowed host ({', '.join(settings.allowed_hosts)})"
                raise ValueError(msg)
            like = by_name.get(name) or settings.servers[0]
            headers = {**like.headers, **dict(entry.get("headers") or {})}
            resolved.append(
                ServerConfig(name, url, headers, like.timeout_seconds, like.connect_timeout_seconds, like.max_sessions)
            )
        servers = tuple(resolved)
    return TaskTools(
        servers=servers,
        setup=_calls(_decoded(info.get("setup_tool")), field_name="setup_tool"),
        evaluate=_calls(_decoded(info.get("evaluate_tool")), field_name="evaluate_tool"),
    )


def truncate_middle(text: str, limit: int) -> str:
    """verl's ``middle`` truncation of a tool response (characters)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "...(truncated)..." + text[-half:]


class Episode:
    """One trajectory's sessions and counters. Use as ``async with Episode(...) as episode:``."""

    def __init__(
        self, settings: AgentSettings, task: TaskTools | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.task = task or TaskTools()
        self._environ = environ
        self.stats = EpisodeStats()
        self.sessions: list[MCPSession] = []
        self._route: dict[str, MCPSession] = {}
        self.tools: list[ToolSpec] = []  # what the model sees
        self._started = 0.0

    async def __aenter__(self) -> Episode:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lifecycle_names(self) -> set[str]:
        names = {self.settings.setup_tool, self.settings.evaluate_tool}
        for calls in (self.task.setup, self.task.evaluate):
            names |= {c.name for c in calls or ()}
        return {n for n in names if n}

    async def open(self) -> list[ToolSpec]:
        """Connect to every server and list its tools; the model sees all but the lifecycle tools (and, when the
        run lists allowedTools, only those).
        """
        self._started = time.monotonic()
        servers = self.task.servers or self.settings.servers
        self.sessions = [MCPSession(s, environ=self._environ, variables=self.settings.variables) for s in servers]
        try:
            listed = await asyncio.gather(*(s.open() for s in self.sessions))
        except EnvironmentFailedError:
            self.stats.env_error = True
            raise
        hidden = self._lifecycle_names()
        for session, tools in zip(self.sessions, listed, strict=True):
            for tool in tools:
                if tool.name in self._route:
                    self.stats.env_error = True
                    first = self._route[tool.name].server.name
                    msg = f"tool {tool.name!r} is offered by servers {first} and {tool.server}"
                    raise EnvironmentFailedError(msg)
                self._route[tool.name] = session
                visible = tool.name not in hidden and (
                    not self.settings.allowed_tools or tool.name in self.settings.allowed_tools
                )
                if visible:
                    self.tools.append(tool)
        return self.tools

    async def _lifecycle(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        results = []
        for call in calls:
            session = self._route.get(call.name)
            if session is None:
                msg = f"lifecycle tool {call.name!r} is not offered by any server"
                raise EnvironmentFailedError(msg)
            result = await session.call(call.name, call.arguments)
            if result.is_error:
                raise EnvironmentFailedError(f"{call.name}: {result.text[:200]}")
            results.append(result)
        return results

    def _default_call(self, name: str | None) -> tuple[ToolCall, ...]:
        return (ToolCall(name),) if name and name in self._route else ()

    async def setup(self) -> None:
        calls = self.task.setup if self.task.setup is not None else self._default_call(self.settings.setup_tool)
        try:
            await self._lifecycle(calls)
        except EnvironmentFailedError:
            self.stats.env_error = True
            raise
        self.stats.setup_ok = True

    async def call(self, call: ToolCall) -> ToolResult:
        """A tool call of the model's: errors (unknown or hidden tool, the tool's own, a timeout) come back as text."""
        self.stats.tool_attempts += 1
        visible = {t.name for t in self.tools}
        if call.name not in visible:
            self.stats.tool_errors += 1
            return ToolResult(f"Error: unknown tool {call.name!r}; available: {', '.join(sorted(visible))}", True)
        try:
            result = await self._route[call.name].call(call.name, call.arguments)
        except EnvironmentFailedError:
            self.stats.env_error = True
            raise
        if result.is_error:
            self.stats.tool_errors += 1
        else:
            self.stats.tool_successes += 1
        limit = self.settings.max_tool_response_chars
        return ToolResult(truncate_middle(result.text, limit), result.is_error, result.structured, result.timed_out)

    def count_malformed(self, count: int = 1) -> None:
        """Tool-call text that did not parse: an attempt, and a format failure."""
        self.stats.tool_attempts += count
        self.stats.malformed_calls += count

    async def evaluate(self) -> float:
        """The environment's reward for the episode (task_completion)."""
        calls = (
            self.task.evaluate if self.task.evaluate is not None else self._default_call(self.settings.evaluate_tool)
        )
        if not calls:
            return 0.0
        try:
            results = await self._lifecycle(calls)
        except EnvironmentFailedError:
            self.stats.env_error = True
            raise
        rewards = [find_reward(r) for r in results]
        self.stats.evaluate_ok = True
        self.stats.task_completion = float(sum(r or 0.0 for r in rewards) / len(rewards))
        return self.stats.task_completion

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions), return_exceptions=True)
        if self._started:
            self.stats.session_seconds = time.monotonic() - self._started
