"""Loka's MCP client: one session per server per trajectory, over the MCP SDK's streamable HTTP transport.

- Headers are templates (``${VAR}``, ``${VAR:default}``, ``$VAR``) resolved from this process's environment only
  when a session connects, and only from the variables the run declared; the resolved values live in the HTTP
  client and nowhere else (never in an error message, a log line, a row or a metric).
- Each session runs in a task of its own, which owns the transport's task group: a server that dies mid-episode
  fails that session's calls (an ``EnvironmentFailedError``), never the episode's task.
- Sessions per server are capped per process and event loop (``max_sessions``); each tool call has a deadline,
  and a call past it comes back as a tool error the model reads, as does a tool that reports ``isError``.
- Closing a session ends it on the server (HTTP DELETE), where HUD-style servers tear the episode down.

mcp is pinned to 1.x (``mcp>=1.30,<2``): 2.0 removed what this uses (``ClientSession`` over
``streamable_http_client`` with camelCase result fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from loka_api.environments import substitute

log = logging.getLogger(__name__)

# Keys under which an evaluate result carries its reward (HUD's find_reward), in order.
REWARD_KEYS = ("reward", "grade", "score")
CLOSE_TIMEOUT_S = 10.0


class EnvironmentFailedError(Exception):
    """The environment could not be used: connect, list tools, setup or evaluate failed, or the session died."""


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server as the agent loop connects to it (URLs resolved, header values still templates)."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 30.0
    max_sessions: int = 64

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ServerConfig:
        return cls(
            name=str(record["name"]),
            url=str(record["url"]),
            headers=dict(record.get("headers") or {}),
            timeout_seconds=float(record.get("timeoutSeconds", 60.0)),
            connect_timeout_seconds=float(record.get("connectTimeoutSeconds", 30.0)),
            max_sessions=int(record.get("maxSessions", 64)),
        )


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the server lists it; ``input_schema`` is its raw JSON Schema, handed to chat templates intact."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    server: str = ""

    def openai_schema(self) -> dict[str, Any]:
        """The tool in the OpenAI function format chat templates take (``{"type": "function", "function": …}``)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.input_schema)},
        }


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool = False
    structured: Mapping[str, Any] | None = None
    timed_out: bool = False


def find_reward(result: ToolResult) -> float | None:
    """HUD's reward extraction: ``structuredContent.{reward|grade|score}``, else ``Σ subscores·weights``, else a JSON
    text content with one of those keys; None when the result carries none.
    """
    for candidate in (result.structured, _json_object(result.text)):
        if not isinstance(candidate, Mapping):
            continue
        for key in REWARD_KEYS:
            value = candidate.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        subscores, weights = candidate.get("subscores"), candidate.get("weights")
        if isinstance(subscores, Mapping) and isinstance(weights, Mapping):
            return float(sum(float(subscores[k]) * float(weights.get(k, 0.0)) for k in subscores))
    return None


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def _result_text(result: Any) -> str:
    parts = []
    for content in result.content or []:
        kind = getattr(content, "type", "")
        if kind == "text":
            parts.append(content.text)
        else:
            parts.append(f"[{kind} content]")
    if not parts and result.structuredContent is not None:
        parts.append(json.dumps(result.structuredContent))
    return "\n".join(parts)


# Session slots per (event loop, server URL): asyncio semaphores belong to one loop.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def session_slots(server: ServerConfig) -> asyncio.Semaphore:
    per_loop = _slots.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((server.url, server.max_sessions), asyncio.Semaphore(server.max_sessions))


class MCPSession:
    """One session on one server. ``open`` connects, initializes and lists tools; ``close`` ends it (DELETE)."""

    def __init__(
        self, server: ServerConfig, *, environ: Mapping[str, str] | None = None, variables: Iterable[str] | None = None
    ) -> None:
        self.server = server
        self._environ = os.environ if environ is None else environ
        self._variables = None if variables is None else tuple(variables)
        self._session: Any = None
        self._stop = asyncio.Event()
        self._host: asyncio.Task[None] | None = None
        self._slot: asyncio.Semaphore | None = None
        self.tools: list[ToolSpec] = []

    def _headers(self) -> dict[str, str]:
        try:
            return {k: substitute(v, self._environ, allowed=self._variables) for k, v in self.server.headers.items()}
        except KeyError as error:
            raise EnvironmentFailedError(f"server {self.server.name}: header {error.args[0]}") from None

    async def open(self) -> list[ToolSpec]:
        headers = self._headers()
        self._slot = session_slots(self.server)
        await self._slot.acquire()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._host = asyncio.create_task(self._run(headers, ready), name=f"mcp-session-{self.server.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.server.connect_timeout_seconds)
            listed = await asyncio.wait_for(self._session.list_tools(), self.server.connect_timeout_seconds)
        except (TimeoutError, EnvironmentFailedError, Exception) as error:
            await self.close()
            raise EnvironmentFailedError(f"server {self.server.name} ({self.server.url}): {_describe(error)}") from None
        self.tools = [
            ToolSpec(t.name, t.description or "", dict(t.inputSchema or {}), self.server.name) for t in listed.tools
        ]
        return self.tools

    async def _run(self, headers: dict[str, str], ready: asyncio.Future[None]) -> None:
        """The session's own task: holds the transport open until ``close``."""
        import httpx
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        timeout = httpx.Timeout(self.server.connect_timeout_seconds, read=self.server.timeout_seconds + 30)
        try:
            async with (
                httpx.AsyncClient(headers=headers, timeout=timeout) as http,
                streamable_http_client(self.server.url, http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                self._session = session
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as error:
            if not ready.done():
                ready.set_exception(EnvironmentFailedError(_describe(error)))
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._session = None

    async def call(self, name: str, arguments: Mapping[str, Any], *, timeout: float | None = None) -> ToolResult:
        """Call a tool; a timeout or a tool's own error comes back as a ToolResult with ``is_error``. Raises
        EnvironmentFailedError when the session is gone.
        """
        from mcp.shared.exceptions import McpError

        session = self._session
        if session is None:
            raise EnvironmentFailedError(f"server {self.server.name}: the session is closed")
        seconds = timeout or self.server.timeout_seconds
        try:
            result = await asyncio.wait_for(
                session.call_tool(name, dict(arguments), read_timeout_seconds=timedelta(seconds=seconds)), seconds + 5
            )
        except (TimeoutError, McpError) as error:
            if isinstance(error, TimeoutError) or error.error.code == 408:
                return ToolResult(f"Error: tool {name!r} timed out after {seconds:g} s", is_error=True, timed_out=True)
            if self._session is None or self._host is None or self._host.done():
                raise EnvironmentFailedError(f"server {self.server.name}: {_describe(error)}") from None
            return ToolResult(f"Error: {error.error.message}", is_error=True)
        except Exception as error:
            raise EnvironmentFailedError(f"server {self.server.name}: {_describe(error)}") from None
        return ToolResult(_result_text(result), is_error=bool(result.isError), structured=result.structuredContent)

    async def close(self) -> None:
        """End the session (DELETE on the server) and give its slot back; safe to call twice."""
        self._stop.set()
        host, self._host = self._host, None
        if host is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(host, CLOSE_TIMEOUT_S)
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


def _describe(error: BaseException) -> str:
    """A short reason without header values (httpx errors name the URL, never the headers)."""
    if isinstance(error, BaseExceptionGroup):
        leaves = [e for e in _leaves(error) if not isinstance(e, asyncio.CancelledError)]
        return "; ".join(_describe(e) for e in leaves[:2]) or "connection failed"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for error in group.exceptions:
        out += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return out
