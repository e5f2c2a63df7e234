"""A toy MCP environment served by the MCP SDK's own FastMCP over streamable HTTP, for tests and `make demo-agent`.

    python -m localcluster.mcp_env --port 8765 [--host 127.0.0.1]

The game: reach a target number with the ``add`` tool. Tools:

- ``setup(target, start=0)`` and ``evaluate(target=None)``: the lifecycle tools (the agent loop hides them from the
  model); evaluate's reward is 1.0 on the target, less the further the counter is from it;
- ``add(n)``: the normal tool; ``read(size)`` returns that many characters (truncation); ``slow(seconds)``
  sleeps (per-call timeouts); ``fail(reason)`` always fails;
- ``inspect(filters, limit)``: nested JSON Schema (a list of objects, ``anyOf``) to prove schemas reach the model
  intact.

State is kept per MCP session, as a HUD-style environment does. ``GET /stats`` returns call counters (per tool,
sessions opened and closed), whether the ``Authorization`` header matched, and the ``Mcp-Image`` headers seen;
``POST /control`` makes every k-th setup fail (``{"fail_setup_every": k}``) to test environment failures. With
``LOKA_MCP_ENV_TOKEN`` set, every MCP request must carry ``Authorization: Bearer <token>`` (else 401); the token
itself is never reported.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

TOKEN_ENV = "LOKA_MCP_ENV_TOKEN"
LIFECYCLE_TOOLS = ("setup", "evaluate")


@dataclass
class Counter:
    value: int = 0
    target: int = 0


@dataclass
class EnvStats:
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions_opened: int = 0
    sessions_closed: int = 0
    unauthorized: int = 0
    authorized: int = 0
    images: set[str] = field(default_factory=set)
    fail_setup_every: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": dict(self.calls),
                "sessions_opened": self.sessions_opened,
                "sessions_closed": self.sessions_closed,
                "authorized": self.authorized,
                "unauthorized": self.unauthorized,
                "images": sorted(self.images),
                "fail_setup_every": self.fail_setup_every,
            }


class Filter(BaseModel):
    key: str
    value: str | int


def build_server(host: str, port: int, stats: EnvStats | None = None) -> tuple[Any, EnvStats]:
    """The FastMCP server and its counters."""
    stats = stats or EnvStats()
    boards: dict[int, Counter] = {}
    server = FastMCP("loka-toy-env", host=host, port=port, log_level="WARNING")

    def board(ctx: Context[Any, Any, Any]) -> Counter:
        return boards.setdefault(id(ctx.session), Counter())

    def count(tool: str) -> int:
        with stats.lock:
            stats.calls[tool] += 1
            return stats.calls[tool]

    @server.tool(description="Start an episode: the counter starts at `start` and should reach `target`.")
    def setup(target: int, ctx: Context[Any, Any, Any], start: int = 0) -> str:
        calls = count("setup")
        if stats.fail_setup_every and calls % stats.fail_setup_every == 0:
            raise ToolError(f"setup {calls} failed (injected)")
        state = board(ctx)
        state.value, state.target = start, target
        return f"counter={state.value} target={target}"

    @server.tool(description="Score the episode: 1.0 when the counter equals the target.")
    def evaluate(ctx: Context[Any, Any, Any], target: int | None = None) -> dict[str, float]:
        count("evaluate")
        state = board(ctx)
        goal = state.target if target is None else target
        distance = abs(state.value - goal)
        return {"reward": max(0.0, 1.0 - distance / max(1, abs(goal)))}

    @server.tool(description="Add n to the counter and return the new value.")
    def add(n: int, ctx: Context[Any, Any, Any]) -> str:
        count("add")
        state = board(ctx)
        state.value += n
        return f"counter={state.value}"

    @server.tool(description="Wait for a number of seconds.")
    async def slow(seconds: float) -> str:
        count("slow")
        await asyncio.sleep(seconds)
        return f"slept {seconds}s"

    @server.tool(description="Read the last `size` characters of the episode's log.")
    def read(size: int) -> str:
        count("read")
        return ("log " * (size // 4 + 1))[:size]

    @server.tool(description="A tool that always fails.")
    def fail(reason: str = "broken") -> str:
        count("fail")
        raise ToolError(f"fail: {reason}")

    @server.tool(description="Look things up with filters.")
    def inspect(filters: list[Filter], mode: Literal["any", "all"] = "all", limit: int | None = None) -> str:
        count("inspect")
        return f"{len(filters)} filters, mode {mode}, limit {limit}"

    @server.custom_route("/stats", methods=["GET"])  # type: ignore[untyped-decorator]
    async def stats_route(request: Request) -> JSONResponse:
        return JSONResponse(stats.as_dict())

    @server.custom_route("/control", methods=["POST"])  # type: ignore[untyped-decorator]
    async def control_route(request: Request) -> JSONResponse:
        body = await request.json()
        with stats.lock:
            stats.fail_setup_every = int(body.get("fail_setup_every", 0))
        return JSONResponse(stats.as_dict())

    return server, stats


class Gate:
    """ASGI middleware: counts sessions opened (initialize) and closed (DELETE), checks the bearer token."""

    def __init__(self, app: Any, stats: EnvStats, token: str | None) -> None:
        self.app, self.stats, self.token = app, stats, token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if self.token is not None:
            presented = headers.get("authorization", "")
            if not hmac.compare_digest(presented.encode(), f"Bearer {self.token}".encode()):
                with self.stats.lock:
                    self.stats.unauthorized += 1
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
            with self.stats.lock:
                self.stats.authorized += 1
        with self.stats.lock:
            if "mcp-image" in headers:
                self.stats.images.add(headers["mcp-image"])
            if scope["method"] == "POST" and "mcp-session-id" not in headers:
                self.stats.sessions_opened += 1
        status: list[int] = []

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, recording_send)
        if scope["method"] == "DELETE" and status and status[0] < 300:
            with self.stats.lock:
                self.stats.sessions_closed += 1


def asgi_app(host: str, port: int) -> tuple[Any, EnvStats]:
    server, stats = build_server(host, port)
    return Gate(server.streamable_http_app(), stats, os.environ.get(TOKEN_ENV) or None), stats


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app, _ = asgi_app(args.host, args.port)
    # One process, one event loop: every session's state lives here.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
