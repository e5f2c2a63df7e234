"""Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it.

Every replica competes for one Lease in the operator's own namespace; only its holder runs kopf (watches,
reconciles). The holder renews every `retry_seconds`; a standby takes over once it has seen the same record for
`lease_seconds` without a renewal (measured on its own clock, so clock skew between nodes does not matter). On a
clean shutdown the holder steps down (its writes are refused from then on), waits for the writes already sent, and
releases the Lease (client-go's ReleaseOnCancel): a rolling update hands over by the standby's next try.

What keeps two replicas from writing at once (client-go's guarantees):
- Each renewal is bounded by what is left of the renew deadline, on the Lease's own client with short timeouts:
  an API server that accepts and never answers cannot keep a holder leading past the deadline.
- The holder stops leading at once when it sees another holder, and when the deadline passes; losing the lead ends
  the process (`on_lost`, client-go's fatal `OnStoppedLeading`), as does a renewer that stops for any reason.
- Every write of the operator's client must be sent before `write_deadline()` and completes by it, or is abandoned:
  the last renewal's start plus the renew deadline, which is before any standby may take the Lease (it waits
  `lease_seconds` after it saw that renewal). A process frozen past it, or cut off, writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loka_api import kinds
from loka_operator.config import LeaderElection
from loka_operator.kube import JSON, ApiError, KubeClient

log = logging.getLogger(__name__)


def identity() -> str:
    """Unique per process: the pod's name (or the host's) and a random suffix, as client-go does."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseElector:
    client: KubeClient  # the Lease's own: short timeouts, its own connections
    election: LeaderElection
    me: str = field(default_factory=identity)
    on_lost: Callable[[], None] = lambda: None
    leading: bool = False
    lost: bool = False
    _held: bool = False  # acquired, and neither lost nor released since
    _observed: dict[str, Any] = field(default_factory=dict)  # the last Lease spec seen
    _observed_at: float = 0.0  # when it last changed, on this process's monotonic clock
    _renewed_at: float = 0.0  # when the last successful renewal was sent
    _other_holder: str = ""

    def write_deadline(self) -> float | None:
        """The monotonic time by which a write must be done; None when this replica may not write."""
        deadline = self._renewed_at + self.election.renew_deadline_seconds
        if not self.leading or time.monotonic() >= deadline:
            return None
        return deadline

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the Lease (True), or `stop` is set (False)."""
        log.info("waiting to lead: Lease %s/%s as %s", self.election.namespace, self.election.name, self.me)
        while not stop.is_set():
            if await self._attempt(self.election.renew_deadline_seconds):
                self.leading = self._held = True
                log.info("leading as %s (Lease %s/%s)", self.me, self.election.namespace, self.election.name)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.election.retry_seconds)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set. The lead ends (and `on_lost` is called) when another holder is seen or no
        renewal succeeded within the renew deadline; each attempt gets only what is left of that deadline."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.election.retry_seconds)
                if stop.is_set():
                    return
                left = self._renewed_at + self.election.renew_deadline_seconds - time.monotonic()
                if left > 0 and await self._attempt(left):
                    continue
                if stop.is_set():
                    return  # stepping down meanwhile: the release decides what is left to do
                if self._other_holder:
                    self._lose(f"{self._other_holder} holds it now")
                elif time.monotonic() >= self._renewed_at + self.election.renew_deadline_seconds:
                    self._lose(f"no renewal for {self.election.renew_deadline_seconds:g}s")
                if self.lost:
                    stop.set()
                    return
        finally:
            if not self.lost and not stop.is_set():  # cancelled or crashed: nobody renews, so nobody may lead
                self._lose("the renewal stopped")
                stop.set()

    def _lose(self, why: str) -> None:
        self.leading, self.lost, self._held = False, True, False
        log.error("lost the Lease %s/%s (%s): stopping", self.election.namespace, self.election.name, why)
        self.on_lost()

    def step_down(self) -> None:
        """Stop leading now, before the Lease is released: every write of the operator's client is refused unsent
        from here on (`write_deadline` is None)."""
        if self.leading:
            log.info("stepping down: no more writes as leader of %s/%s", self.election.namespace, self.election.name)
        self.leading = False

    async def release(self) -> None:
        """Give the Lease up so that a standby takes over by its next try (only if this process still holds it).
        Call it once nothing this process sent can land any more: the standby may write as soon as it is done."""
        self.step_down()
        if not self._held or self.lost:
            return
        self._held = False
        namespace, name = self.election.namespace, self.election.name
        for _ in range(3):  # a renewal cut short may still land first: read again and retry on a conflict
            try:
                lease = await self.client.get(kinds.LEASE, namespace, name)
                if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.me:
                    return
                stamp = _micro_time(datetime.now(UTC))
                spec = lease["spec"]
                lease["spec"] = {
                    "leaseDurationSeconds": 1,
                    "acquireTime": stamp,
                    "renewTime": stamp,
                    "leaseTransitions": spec.get("leaseTransitions", 0),
                }
                await self.client.replace(kinds.LEASE, namespace, name, lease)
                log.info("released the Lease %s/%s", namespace, name)
                return
            except ApiError as error:
                if error.status != 409:
                    log.warning("could not release the Lease %s/%s: %s", namespace, name, error)
                    return
        log.warning("could not release the Lease %s/%s: it kept changing", namespace, name)

    async def _attempt(self, within: float) -> bool:
        """One round, given `within` seconds; any failure (a hung call, a refused login, a malformed Lease) is a
        failed round, never an end of the renewer."""
        try:
            return await asyncio.wait_for(self._try(), timeout=within)
        except TimeoutError:
            log.warning("Lease %s/%s: no answer within %.1fs", self.election.namespace, self.election.name, within)
        except Exception:
            log.exception("Lease %s/%s: the round failed", self.election.namespace, self.election.name)
        return False

    async def _try(self) -> bool:
        """One acquire-or-renew round: True when this process holds the Lease afterwards."""
        namespace, name = self.election.namespace, self.election.name
        sent = time.monotonic()
        stamp = _micro_time(datetime.now(UTC))
        try:
            lease = await self.client.get(kinds.LEASE, namespace, name)
            if lease is None:
                body: JSON = {
                    "apiVersion": kinds.LEASE.api_version,
                    "kind": kinds.LEASE.kind,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": self._record(stamp, stamp, 0),
                }
                await self.client.create(kinds.LEASE, namespace, body)
                self._renewed_at = sent
                return True
            spec: dict[str, Any] = lease.get("spec") or {}
            if spec != self._observed:
                self._observed, self._observed_at = spec, time.monotonic()
            holder = str(spec.get("holderIdentity") or "")
            duration = _number(spec.get("leaseDurationSeconds"), self.election.lease_seconds)
            if holder and holder != self.me and time.monotonic() < self._observed_at + duration:
                if self.leading:
                    self._other_holder = holder
                return False  # someone else holds it and renews
            if self.leading and holder != self.me:
                self._other_holder = holder or "nobody"  # taken (and given up) while this process still led
                return False
            transitions = int(_number(spec.get("leaseTransitions"), 0))
            if holder == self.me:
                lease["spec"] = self._record(spec.get("acquireTime") or stamp, stamp, transitions)
            else:
                lease["spec"] = self._record(stamp, stamp, transitions + 1)
            await self.client.replace(kinds.LEASE, namespace, name, lease)
        except ApiError as error:
            if error.status != 409:  # 409: another replica wrote first
                log.warning("Lease %s/%s: %s", namespace, name, error)
            return False
        self._renewed_at = sent
        return True

    def _record(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.me,
            "leaseDurationSeconds": round(self.election.lease_seconds),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }


def _number(value: object, default: float) -> float:
    """A Lease field as a number; a malformed one (another writer's bug) counts as absent."""
    try:
        return float(value) if value is not None and value != "" else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
