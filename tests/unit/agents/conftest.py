"""A real MCP environment for the agent tests: localcluster.mcp_env (the MCP SDK's FastMCP, streamable HTTP) in its
own process on a free local port, requiring a bearer token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from localcluster.mcp_env import TOKEN_ENV
from localcluster.operator_process import free_port

TOKEN = "tok-" + os.urandom(8).hex()


@dataclass(frozen=True)
class McpEnv:
    url: str
    base: str
    token: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/stats", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def control(self, **settings: Any) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base}/control", data=json.dumps(settings).encode(), method="POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


def start_env(token: str | None) -> tuple[subprocess.Popen[bytes], McpEnv]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token:
        env[TOKEN_ENV] = token
    log = tempfile.TemporaryFile()  # noqa: SIM115 (read when it fails to start)
    process = subprocess.Popen(
        [sys.executable, "-m", "localcluster.mcp_env", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    server = McpEnv(f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}", token or "")
    deadline = time.monotonic() + 60
    while True:
        try:
            server.stats()
            return process, server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                raise RuntimeError(f"mcp_env did not start: {log.read().decode()[-2000:]}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def mcp_env() -> Iterator[McpEnv]:
    process, server = start_env(TOKEN)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
