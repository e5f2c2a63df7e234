"""A per-run work queue: at most one reconcile per run at a time, bursts of events coalesced into one more pass.

Watch handlers only call `request()` and return, so kopf's event loop never waits on a reconcile. A run whose
reconcile fails backs off exponentially with jitter (runs that failed together do not retry together) and keeps
what the failed pass was asked to do (a drift pass is retried as one); events that arrive meanwhile wait for the
backoff instead of retrying at once. Forgetting a run (it was deleted) cancels its reconcile in flight and any timer.
Draining (the operator stops) cancels every reconcile and timer, and the queue takes no request after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ReconcileFn = Callable[[str, bool], Awaitable[float | None]]
JITTER = 0.25  # a backoff is cut by up to this share at random


@dataclass
class _Slot:
    dirty: bool = False
    drift: bool = False
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0
    failures: int = 0
    backoff_until: float = 0.0  # no reconcile before this (monotonic), whatever events arrive

    def running(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass
class RunQueue:
    """`reconcile(key, drift)` returns seconds until the run should be looked at again, or None."""

    reconcile: ReconcileFn
    max_concurrent: int = 16
    base_backoff: float = 0.5
    max_backoff: float = 60.0
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _limit: asyncio.Semaphore | None = None
    _drained: bool = False

    def request(self, key: str, *, drift: bool = False) -> None:
        if self._drained:
            return
        slot = self._slots.setdefault(key, _Slot())
        slot.drift = slot.drift or drift
        if slot.running():
            slot.dirty = True
            return
        wait = slot.backoff_until - time.monotonic()
        if wait > 0:
            # Still backing off from a failure: this event is served by the retry already scheduled.
            slot.dirty = True
            self._schedule(key, slot, wait)
            return
        slot.dirty = False
        slot.task = asyncio.get_running_loop().create_task(self._run(key, slot), name=f"reconcile {key}")

    def request_after(self, key: str, delay: float, *, drift: bool = False) -> None:
        if self._drained:
            return
        slot = self._slots.setdefault(key, _Slot())
        slot.drift = slot.drift or drift
        self._schedule(key, slot, delay)

    def _schedule(self, key: str, slot: _Slot, delay: float) -> None:
        due = time.monotonic() + delay
        if slot.timer is not None and slot.timer_due <= due:
            return  # an earlier look is already scheduled
        if slot.timer is not None:
            slot.timer.cancel()
        slot.timer_due = due
        slot.timer = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: str) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.timer = None
        self.request(key)

    def forget(self, key: str) -> None:
        """The run is gone: stop its reconcile in flight, its timer and its backoff."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        if slot.timer is not None:
            slot.timer.cancel()
        if slot.running():
            assert slot.task is not None
            slot.task.cancel()

    def busy(self) -> int:
        return sum(1 for slot in self._slots.values() if slot.running())

    def keys(self) -> list[str]:
        return list(self._slots)

    async def _run(self, key: str, slot: _Slot) -> None:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.max_concurrent)
        while True:
            drift, slot.drift = slot.drift, False
            delay: float | None
            async with self._limit:
                try:
                    delay = await self.reconcile(key, drift)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    slot.failures += 1
                    slot.drift = slot.drift or drift  # the retry does what this pass was asked to do
                    delay = min(self.max_backoff, self.base_backoff * 2**slot.failures)
                    delay *= 1 - JITTER * random.random()  # spreads retries; not a secret
                    slot.backoff_until = time.monotonic() + delay
                    log.exception("reconcile of %s failed (attempt %d); retrying in %.1fs", key, slot.failures, delay)
                    self._schedule(key, slot, delay)
                    return  # events that arrived meanwhile wait for the retry
                slot.failures = 0
                slot.backoff_until = 0.0
            if delay is not None:
                self._schedule(key, slot, delay)
            if not slot.dirty:
                return
            slot.dirty = False

    async def drain(self) -> None:
        """Cancel every reconcile in flight and every timer, and take no request from now on."""
        self._drained = True
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None and slot.running()]
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
