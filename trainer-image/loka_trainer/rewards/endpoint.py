"""One HTTP endpoint a reward component calls (a judge, a reward-model server), with the policy every such call
follows, so that a slow or failing endpoint slows or zeroes its component and never stalls the run:

- a deadline per call, retries included; at most ``max_concurrency`` requests in flight per process and event loop;
- 429, 408 and 5xx (and a refused or dropped connection) retried with jittered exponential backoff, honouring
  ``Retry-After``; any other 4xx not (a bad key or a bad request does not heal);
- the API key read at call time from the environment variable ``api_key_env`` names; never logged.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx
MAX_BACKOFF_S = 8.0


@dataclass(frozen=True)
class Endpoint:
    url: str  # the base URL, e.g. http://judge:8000/v1
    max_concurrency: int = 8
    retries: int = 3
    backoff_s: float = 0.5
    api_key_env: str | None = None


@dataclass(frozen=True)
class Reply:
    """The JSON an endpoint answered with (HTTP 200), or why there is none."""

    payload: Any = None
    error: str | None = None  # "timeout", "connection", "http <status>", "unparseable" (200 without JSON)
    status: int | None = None
    attempts: int = 0
    retry_after: float | None = None


@dataclass
class _LoopState:
    session: aiohttp.ClientSession
    semaphore: asyncio.Semaphore


class EndpointClient:
    """Posts JSON to one endpoint; safe to share across the coroutines of one event loop (and across loops)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None or state.session.closed:
            limit = self.endpoint.max_concurrency
            connector = aiohttp.TCPConnector(limit=limit)
            state = _LoopState(aiohttp.ClientSession(connector=connector), asyncio.Semaphore(limit))
            self._states[loop] = state
        return state

    async def close(self) -> None:
        """Close this loop's connection pool (the others close with their loops)."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.session.close()

    def _headers(self) -> dict[str, str]:
        name = self.endpoint.api_key_env
        key = os.environ.get(name) if name else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def post(self, path: str, body: Any, deadline: float) -> Reply:
        """POST ``body`` to ``<url><path>`` until it answers, fails for good, or ``deadline`` (monotonic) passes."""
        reply, attempts = Reply(), 0
        for retry in range(self.endpoint.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reply(error="timeout", attempts=attempts)
            attempts += 1
            reply = await self._post_once(path, body, remaining)
            if reply.error is None or not _retryable(reply) or retry == self.endpoint.retries:
                break
            backoff = min(MAX_BACKOFF_S, self.endpoint.backoff_s * 2**retry) * random.uniform(0.5, 1.0)
            wait = max(backoff, reply.retry_after or 0.0)
            if time.monotonic() + wait >= deadline:
                break
            await asyncio.sleep(wait)
        return Reply(reply.payload, reply.error, reply.status, attempts, reply.retry_after)

    async def _post_once(self, path: str, body: Any, remaining: float) -> Reply:
        state = self._state()
        url = self.endpoint.url.rstrip("/") + path
        try:
            async with (
                asyncio.timeout(remaining),
                state.semaphore,
                state.session.post(url, json=body, headers=self._headers()) as answer,
            ):
                if answer.status != 200:
                    return Reply(
                        error=f"http {answer.status}",
                        status=answer.status,
                        retry_after=_retry_after(answer.headers.get("Retry-After")),
                    )
                return Reply(payload=await answer.json(content_type=None), status=200)
        except TimeoutError:
            return Reply(error="timeout")
        except (aiohttp.ClientError, OSError):
            return Reply(error="connection")
        except ValueError:
            return Reply(error="unparseable", status=200)


def _retryable(reply: Reply) -> bool:
    if reply.error == "timeout":
        return False  # a timed-out attempt already spent the budget
    if reply.error == "connection":
        return True
    return reply.status is not None and (reply.status in RETRYABLE_STATUS or reply.status >= 500)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def flatten(messages: Sequence[Mapping[str, Any]]) -> str:
    """A conversation as one text, a ``role: content`` line per message (what a judge or a text RM reads)."""
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)
