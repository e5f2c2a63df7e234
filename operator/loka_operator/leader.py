"""Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it.

Every replica competes for one Lease in the operator's own namespace; only its holder runs kopf (watches,
reconciles). The holder renews every `retry_seconds`; a standby takes over once it has seen the same record for
`lease_seconds` without a renewal (measured on its own clock, so clock skew between nodes does not matter). A
holder that cannot renew for `renew_deadline_seconds` stops itself before anyone else may take over. On a clean
shutdown the holder releases the Lease, so a rolling update hands over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loka_operator.config import LeaderElection
from loka_operator.kube import JSON, LEASES, ApiError, KubeClient

log = logging.getLogger(__name__)


def identity() -> str:
    """Unique per process: the pod's name (or the host's) and a random suffix, as client-go does."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseElector:
    client: KubeClient
    election: LeaderElection
    me: str = field(default_factory=identity)
    leading: bool = False
    lost: bool = False
    _observed: dict[str, Any] = field(default_factory=dict)  # the last Lease spec seen
    _observed_at: float = 0.0  # when it last changed, on this process's monotonic clock
    _renewed_at: float = 0.0

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the Lease (True), or `stop` is set (False)."""
        log.info("waiting to lead: Lease %s/%s as %s", self.election.namespace, self.election.name, self.me)
        while not stop.is_set():
            if await self._try():
                self.leading = True
                log.info("leading as %s (Lease %s/%s)", self.me, self.election.namespace, self.election.name)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.election.retry_seconds)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; when renewals fail past the deadline, mark the lead lost and set `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.election.retry_seconds)
            if stop.is_set():
                return
            if await self._try():
                continue
            if time.monotonic() - self._renewed_at > self.election.renew_deadline_seconds:
                self.leading, self.lost = False, True
                log.error("lost the Lease %s/%s: stopping", self.election.namespace, self.election.name)
                stop.set()

    async def release(self) -> None:
        """Give the Lease up so that a standby takes over at once (only if this process still holds it)."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.client.get(LEASES, self.election.namespace, self.election.name)
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
            await self.client.replace(LEASES, self.election.namespace, self.election.name, lease)
            log.info("released the Lease %s/%s", self.election.namespace, self.election.name)
        except ApiError as error:
            log.warning("could not release the Lease %s/%s: %s", self.election.namespace, self.election.name, error)

    async def _try(self) -> bool:
        """One acquire-or-renew round: True when this process holds the Lease afterwards."""
        namespace, name = self.election.namespace, self.election.name
        stamp = _micro_time(datetime.now(UTC))
        try:
            lease = await self.client.get(LEASES, namespace, name)
            if lease is None:
                body: JSON = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": self._record(stamp, stamp, 0),
                }
                await self.client.create(LEASES, namespace, body)
                self._renewed_at = time.monotonic()
                return True
            spec: dict[str, Any] = lease.get("spec") or {}
            if spec != self._observed:
                self._observed, self._observed_at = spec, time.monotonic()
            holder = spec.get("holderIdentity") or ""
            duration = float(spec.get("leaseDurationSeconds") or self.election.lease_seconds)
            if holder and holder != self.me and time.monotonic() < self._observed_at + duration:
                return False  # someone else holds it and renews
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.me:
                lease["spec"] = self._record(spec.get("acquireTime") or stamp, stamp, transitions)
            else:
                lease["spec"] = self._record(stamp, stamp, transitions + 1)
            await self.client.replace(LEASES, namespace, name, lease)
        except ApiError as error:
            if error.status != 409:  # 409: another replica wrote first
                log.warning("Lease %s/%s: %s", namespace, name, error)
            return False
        self._renewed_at = time.monotonic()
        return True

    def _record(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.me,
            "leaseDurationSeconds": round(self.election.lease_seconds),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }
