"""The notice sender against an API server stand-in that enforces resourceVersion preconditions: every race lost is
read again and retried at once, and nothing is posted twice (the same races on the real control plane are in
tests/operator/test_notifications.py)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from loka_api import NotificationState, SecretKeyRef
from loka_operator.kube import JSON, ApiError
from loka_operator.notifications import Notifier

RUN: JSON = {
    "metadata": {"name": "r", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
    "spec": {
        "image": "x",
        "model": {"uri": "hf://a/b"},
        "data": {"train": "s3://d/t"},
        "notifications": {"slack": {"webhook": {"secret": "s", "key": "k"}}},
    },
    "status": {"phase": "Succeeded", "attempt": 1},
}


class RunStore:
    """One run; a conditional write on an old resourceVersion is refused with 409, as the API server does.
    ``race(patch)`` True: a trainer patch lands just before that write."""

    def __init__(self, body: JSON, race: Callable[[JSON], bool] = lambda _: False) -> None:
        self.body, self.race, self.writes = copy.deepcopy(body), race, 0

    def _bump(self) -> None:
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def get(self, _kind: Any, _ns: str, _name: str) -> JSON:
        return copy.deepcopy(self.body)

    async def merge_patch(self, _kind: Any, _ns: str, _name: str, patch: JSON, *, subresource: str = "") -> JSON:
        if self.race(patch):
            self._bump()  # the trainer's progress patch
        wanted = patch.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != self.body["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.body["status"].update(patch["status"])
        self.writes += 1
        self._bump()
        return copy.deepcopy(self.body)


class CountingNotifier(Notifier):
    posted: list[str]

    async def _deliver(
        self, namespace: str, webhook: SecretKeyRef, payload: JSON, tries: int
    ) -> tuple[NotificationState, str, int]:
        self.posted.append(payload["text"])
        return NotificationState.SENT, "", tries + 1


def notifier(store: RunStore) -> CountingNotifier:
    sender = CountingNotifier(store, conflict_backoff=(0.0,))  # type: ignore[arg-type]
    sender.posted = []
    return sender


def owed(*events: str) -> list[JSON]:
    return [{"event": event, "attempt": 1, "state": "Sending"} for event in events]


def records(store: RunStore) -> list[tuple[str, str, int]]:
    return [(r["event"], r["state"], r.get("tries", 0)) for r in store.body["status"]["notifications"]]


async def settled(sender: Notifier) -> None:
    while sender._tasks:
        await asyncio.sleep(0.01)


def test_owed_notices_are_posted_once_in_order() -> None:
    async def scenario() -> None:
        store = RunStore({**RUN, "status": {**RUN["status"], "notifications": owed("Started", "Succeeded")}})
        sender = notifier(store)
        sender.step(store.body)
        sender.step(store.body)  # a second reconcile while the first sender runs
        await settled(sender)
        assert [t.split("*")[2].split(" (")[0].strip() for t in sender.posted] == ["started", "succeeded"]
        assert records(store) == [("Started", "Sent", 1), ("Succeeded", "Sent", 1)]
        sender.step(store.body)
        await settled(sender)
        assert len(sender.posted) == 2

    asyncio.run(scenario())


def test_a_claim_and_a_record_that_lose_races_are_retried_and_never_post_twice() -> None:
    lost: list[str] = []

    def race(patch: JSON) -> bool:
        (record,) = patch["status"]["notifications"]
        kind = "claim" if record["state"] == "Sending" else "record"
        if lost.count(kind) < (1 if kind == "claim" else 6):
            lost.append(kind)
            return True
        return False

    async def scenario() -> None:
        store = RunStore({**RUN, "status": {**RUN["status"], "notifications": owed("Succeeded")}}, race)
        sender = notifier(store)
        sender.step(store.body)
        await settled(sender)
        sender.step(store.body)  # the next reconcile: nothing left to send
        await settled(sender)
        assert lost == ["claim", *["record"] * 6]
        assert len(sender.posted) == 1
        assert records(store) == [("Succeeded", "Sent", 1)]

    asyncio.run(scenario())


def test_a_notice_held_by_a_live_sender_is_left_to_it_until_the_claim_expires() -> None:
    async def scenario() -> None:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        held = [{"event": "Succeeded", "attempt": 1, "state": "Sending", "sender": "other", "time": now}]
        store = RunStore({**RUN, "status": {**RUN["status"], "notifications": held}})
        sender = notifier(store)
        look_again = sender.step(store.body)
        await settled(sender)
        assert sender.posted == [] and look_again is not None and look_again > 0

    asyncio.run(scenario())
