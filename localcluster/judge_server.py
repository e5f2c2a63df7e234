"""A judge that speaks OpenAI's chat completions API on a local port, for tests and the local demo.

It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) over real HTTP, scoring the text between
``<response>`` and ``</response>`` in the last user message deterministically, so two judges can be told apart
and a test knows every score in advance:

- model ``digits``: 10 x the share of the response's characters that are digits;
- model ``length``: one point per 4 characters, at most 10;
- any other model: 5.

Its reply is ``Score: N`` (0..10), with ``usage`` token counts (words, not a tokenizer). A mode turns it into the
judge a run must survive, in turn:

- ``ok``; ``slow`` (every answer waits ``delay_s``); ``error`` (500); ``ratelimit`` (429 with ``Retry-After: 0``);
  ``bad_request`` (400); ``malformed`` (200 without a score);
- ``fail_first`` makes only the first N requests answer with the mode's failure, the rest ``ok``.

    python -m localcluster.judge_server --port 0 [--mode ok] [--api-key KEY]   # prints its base URL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

MODES = ("ok", "slow", "error", "ratelimit", "bad_request", "malformed")
_FAILURE_STATUS = {"error": 500, "ratelimit": 429, "bad_request": 400}
_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)
MAX_SCORE = 10


def judge_score(model: str, response: str) -> int:
    """The score this server gives ``response`` as judge ``model`` (0..10)."""
    text = response.strip()
    if model == "digits":
        return round(MAX_SCORE * sum(c.isdigit() for c in text) / len(text)) if text else 0
    if model == "length":
        return min(MAX_SCORE, len(text) // 4)
    return 5


@dataclass
class JudgeBehaviour:
    mode: str = "ok"
    delay_s: float = 2.0
    fail_first: int | None = None  # only the first N requests fail (then ok); None: every request
    api_key: str | None = None  # when set, requests must carry `Authorization: Bearer <key>` (else 401)


@dataclass
class JudgeLog:
    """What the server saw, for tests to assert on."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    models: Counter[str] = field(default_factory=Counter)
    temperatures: list[float] = field(default_factory=list)
    systems: list[str] = field(default_factory=list)  # each request's system turn (the rubric it was given)


class JudgeServer:
    """The judge on ``127.0.0.1:<port>`` (0: a free port), served from its own thread's event loop."""

    def __init__(self, behaviour: JudgeBehaviour | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.behaviour = behaviour or JudgeBehaviour()
        self.log = JudgeLog()
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._closing: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL (``http://127.0.0.1:<port>/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def set_mode(self, mode: str, *, fail_first: int | None = None, delay_s: float | None = None) -> None:
        if mode not in MODES:
            msg = f"mode {mode!r} is not one of {', '.join(MODES)}"
            raise ValueError(msg)
        with self._lock:
            self.behaviour.mode = mode
            self.behaviour.fail_first = fail_first
            if delay_s is not None:
                self.behaviour.delay_s = delay_s
            self.log.requests = 0

    # ------------------------------------------------------------------------------------------ serving

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.log.requests += 1
            number = self.log.requests
            self.log.in_flight += 1
            self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
            behaviour = JudgeBehaviour(**vars(self.behaviour))
        try:
            response = await self._answer(request, behaviour, number)
        finally:
            with self._lock:
                self.log.in_flight -= 1
        with self._lock:
            self.log.statuses[response.status] += 1
        return response

    async def _answer(self, request: web.Request, behaviour: JudgeBehaviour, number: int) -> web.StreamResponse:
        if behaviour.api_key is not None and request.headers.get("Authorization") != f"Bearer {behaviour.api_key}":
            return _error(401, "invalid_api_key", "Incorrect API key provided")
        try:
            body = await request.json()
            model, messages = str(body["model"]), list(body["messages"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "expected a JSON body with model and messages")
        with self._lock:
            self.log.models[model] += 1
            self.log.temperatures.append(float(body.get("temperature", 1.0)))
            self.log.systems += [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
        failing = behaviour.fail_first is None or number <= behaviour.fail_first
        mode = behaviour.mode if failing else "ok"
        if mode == "slow" and self._closing is not None:
            with contextlib.suppress(TimeoutError):  # a stopping server answers its slow requests at once
                await asyncio.wait_for(self._closing.wait(), behaviour.delay_s)
        if mode in _FAILURE_STATUS:
            headers = {"Retry-After": "0"} if mode == "ratelimit" else None
            return _error(_FAILURE_STATUS[mode], mode, f"judge mode {mode}", headers=headers)
        last_user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        found = _RESPONSE.search(last_user)
        score = judge_score(model, found.group(1) if found else "")
        content = "I cannot judge this." if mode == "malformed" else f"The response is judged.\nScore: {score}"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(content.split())
        return web.json_response(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        del request
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in ("digits", "length")]}
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        return app

    # ---------------------------------------------------------------------------------------- lifecycle

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self._serve, name="judge-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout=30):
            msg = "the judge server did not start within 30 s"
            raise RuntimeError(msg)
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(self.app(), access_log=None)
        loop.run_until_complete(self._runner.setup())
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        self.port = listener.getsockname()[1]
        loop.run_until_complete(web.SockSite(self._runner, listener).start())
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(status: int, kind: str, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds a slow answer waits")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    server = JudgeServer(JudgeBehaviour(mode=args.mode, delay_s=args.delay, api_key=args.api_key), host=args.host)
    server.port = args.port
    server.start()
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
