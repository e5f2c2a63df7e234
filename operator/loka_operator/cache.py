"""The latest body of every run and of each run's RayJob, as the watches delivered them or our own writes
returned them: a reconcile reads from here and goes to the API server only when it must (drift repair).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loka_operator import naming
from loka_operator.kube import JSON, RAYJOBS, TRAINING_RUNS, KubeClient


def _rv(obj: JSON | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


@dataclass
class RunCache:
    """Keyed by run (`namespace/name`); the newest resourceVersion wins, so a late watch event never rewinds."""

    client: KubeClient
    _runs: dict[str, JSON] = field(default_factory=dict)
    _rayjobs: dict[str, JSON] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------ runs

    def remember_run(self, body: JSON) -> None:
        key = naming.run_key(body["metadata"]["namespace"], body["metadata"]["name"])
        if _rv(body) >= _rv(self._runs.get(key)):
            self._runs[key] = body

    def known(self, key: str) -> bool:
        return key in self._runs

    def cached_run(self, namespace: str, name: str) -> JSON | None:
        """The run as the cache holds it, without asking the API server."""
        return self._runs.get(naming.run_key(namespace, name))

    def forget(self, key: str) -> None:
        self._runs.pop(key, None)
        self._rayjobs.pop(key, None)

    async def load_run(self, namespace: str, name: str, *, fresh: bool) -> JSON | None:
        """The run from the cache, or (``fresh`` or not cached) from the API server; None when it is gone."""
        key = naming.run_key(namespace, name)
        cached = self._runs.get(key)
        if cached is not None and not fresh:
            return cached
        body = await self.client.get(TRAINING_RUNS, namespace, name)
        if body is None:
            self.forget(key)
            return None
        self.remember_run(body)
        return self._runs[key]

    # --------------------------------------------------------------------------------- RayJobs

    def remember_rayjob(self, key: str, body: JSON) -> None:
        if _rv(body) >= _rv(self._rayjobs.get(key)):
            self._rayjobs[key] = body

    def forget_rayjob(self, key: str) -> None:
        self._rayjobs.pop(key, None)

    async def load_rayjob(self, namespace: str, name: str, *, fresh: bool) -> JSON | None:
        """The run's RayJob from the cache, or from the API server; None when there is none."""
        key = naming.run_key(namespace, name)
        cached = self._rayjobs.get(key)
        if cached is not None and not fresh:
            return cached
        body = await self.client.get(RAYJOBS, namespace, naming.rayjob_name(name))
        if body is None:
            self.forget_rayjob(key)
            return None
        self.remember_rayjob(key, body)
        return self._rayjobs[key]
