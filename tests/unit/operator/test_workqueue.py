"""The per-run work queue: one reconcile per run at a time, bursts coalesced, failures retried with backoff."""

from __future__ import annotations

import asyncio
import itertools

from loka_operator.workqueue import JITTER, RunQueue


def test_burst_of_events_for_one_run_coalesces_into_one_more_pass() -> None:
    calls: list[str] = []
    running: set[str] = set()
    overlapped = False

    async def reconcile(key: str, drift: bool) -> float | None:
        nonlocal overlapped
        overlapped = overlapped or key in running
        running.add(key)
        calls.append(key)
        await asyncio.sleep(0.05)
        running.discard(key)
        return None

    async def scenario() -> None:
        queue = RunQueue(reconcile)
        for _ in range(20):
            queue.request("ns/a")
        queue.request("ns/b")
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert calls.count("ns/a") == 2  # the first pass, then one more for everything that arrived meanwhile
    assert calls.count("ns/b") == 1
    assert not overlapped


def test_requeue_after_runs_again_and_failures_back_off() -> None:
    calls: list[tuple[str, bool]] = []

    async def reconcile(key: str, drift: bool) -> float | None:
        calls.append((key, drift))
        if key == "ns/failing" and len([c for c in calls if c[0] == key]) == 1:
            raise RuntimeError("API server hiccup")
        return 0.05 if key == "ns/waiting" and len(calls) < 4 else None

    async def scenario() -> None:
        queue = RunQueue(reconcile, max_backoff=0.1)
        queue.request("ns/waiting")
        queue.request("ns/failing")
        queue.request_after("ns/drift", 0.05, drift=True)
        await asyncio.sleep(1.5)

    asyncio.run(scenario())
    assert [c for c in calls if c[0] == "ns/failing"] == [("ns/failing", False)] * 2  # retried after the error
    assert len([c for c in calls if c[0] == "ns/waiting"]) >= 2
    assert ("ns/drift", True) in calls


def test_concurrency_is_bounded() -> None:
    active = 0
    peak = 0

    async def reconcile(key: str, drift: bool) -> float | None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return None

    async def scenario() -> None:
        queue = RunQueue(reconcile, max_concurrent=3)
        for i in range(12):
            queue.request(f"ns/run-{i}")
        await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert peak == 3


def test_events_arriving_while_a_run_backs_off_wait_for_the_retry() -> None:
    attempts: list[float] = []

    async def reconcile(key: str, drift: bool) -> float | None:
        attempts.append(asyncio.get_running_loop().time())
        raise RuntimeError("admission webhook unreachable")

    async def scenario() -> None:
        queue = RunQueue(reconcile)
        queue.request("ns/failing")
        for _ in range(70):  # a run whose spec or children keep changing
            await asyncio.sleep(0.05)
            queue.request("ns/failing")

    asyncio.run(scenario())
    # 3.5 s of events: attempts at 0, then after 1 and 2 s of backoff; never one per event.
    assert 2 <= len(attempts) <= 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps))


def test_forgetting_a_deleted_run_cancels_its_reconcile_in_flight() -> None:
    finished: list[str] = []
    started = asyncio.Event

    async def scenario() -> None:
        began = started()

        async def reconcile(key: str, drift: bool) -> float | None:
            began.set()
            await asyncio.sleep(5)  # e.g. a create held by a slow admission webhook
            finished.append(key)
            return 1.0

        queue = RunQueue(reconcile)
        queue.request("ns/deleted")
        await began.wait()
        queue.forget("ns/deleted")
        await asyncio.sleep(0.05)
        assert queue.busy() == 0
        assert queue.keys() == []

    asyncio.run(scenario())
    assert finished == []


def test_a_failed_drift_pass_is_retried_as_a_drift_pass() -> None:
    calls: list[bool] = []

    async def reconcile(key: str, drift: bool) -> float | None:
        calls.append(drift)
        if len(calls) == 1:
            raise RuntimeError("the Secret check timed out")
        return None

    async def scenario() -> None:
        queue = RunQueue(reconcile, base_backoff=0.01)
        queue.request("ns/a", drift=True)
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert calls == [True, True]  # the retry checks the token and the Secrets again


def test_runs_that_fail_together_retry_at_different_times_within_the_backoff() -> None:
    started = 0.0
    retried: dict[str, float] = {}

    async def reconcile(key: str, drift: bool) -> float | None:
        if key in retried or not started:
            raise AssertionError("unexpected")
        if asyncio.get_running_loop().time() - started < 0.05:
            raise RuntimeError("the API server restarted")
        retried[key] = asyncio.get_running_loop().time() - started
        return None

    async def scenario() -> None:
        nonlocal started
        started = asyncio.get_running_loop().time()
        queue = RunQueue(reconcile, base_backoff=0.1)  # first backoff: 0.2 s less up to a quarter
        for index in range(20):
            queue.request(f"ns/run-{index}")
        await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert len(retried) == 20
    assert all(0.2 * (1 - JITTER) - 0.01 <= at <= 0.2 + 0.05 for at in retried.values()), retried
    assert len({round(at, 3) for at in retried.values()}) > 5  # spread, not one thundering herd


def test_a_drained_queue_cancels_what_runs_and_starts_nothing_more() -> None:
    """The operator stops: the reconcile in flight ends, and neither a late event nor a due timer starts another."""
    started: list[str] = []
    finished: list[str] = []

    async def reconcile(key: str, drift: bool) -> float | None:
        started.append(key)
        await asyncio.sleep(10)
        finished.append(key)
        return None

    async def scenario() -> None:
        queue = RunQueue(reconcile)
        queue.request("ns/a")
        queue.request_after("ns/b", 0.05)
        await asyncio.sleep(0.01)
        await queue.drain()
        queue.request("ns/c")
        queue.request_after("ns/d", 0.0)
        await asyncio.sleep(0.1)
        assert queue.busy() == 0

    asyncio.run(scenario())
    assert started == ["ns/a"]
    assert finished == []
