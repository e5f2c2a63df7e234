"""RewardCycles through the API server (``Client.cycles``): typed (the core's ``RewardCycle``), submitted by
server-side apply after a check against the models. Their stages are ordinary runs and Evaluations: read them with
``Client.get`` and ``Client.evaluations.get`` by the names ``status.iterations`` lists.

    with Client(namespace="team-a") as client:
        cycle = client.cycles.submit(Path("reward-cycle.yaml"))
        print(client.cycles.get(cycle.metadata.name).status.stage)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loka_api import kinds
from loka_api.cycle import RewardCycle
from loka_client.errors import InvalidRunError, NotFoundError, WaitTimeoutError
from loka_client.runs import JSON, field_of, parse_manifest, problems

if TYPE_CHECKING:
    from loka_client.connection import Connection

CYCLES = kinds.REWARD_CYCLE
FIELD_MANAGER = "loka"
POLL_SECONDS = 0.5


class CycleNotFoundError(NotFoundError):
    """No RewardCycle of that name in that namespace."""

    def __init__(self, name: str, namespace: str) -> None:
        super().__init__(
            f"no RewardCycle {name!r} in namespace {namespace!r}",
            hint=f"list them with `kubectl get rewardcycles -n {namespace}`",
        )
        self.name, self.namespace = name, namespace


class Cycles:
    """The RewardCycles of one cluster: ``Client.cycles``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.connection.namespace

    def _call(self, what: str, name: str, ns: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        return self.connection.call_on("RewardCycle", what, name, ns, CycleNotFoundError, method, *args, **kwargs)

    def get(self, name: str, namespace: str | None = None) -> RewardCycle:
        ns = self._ns(namespace)
        body = self._call("reading", name, ns, self.connection.custom.get_namespaced_custom_object, *_where(ns), name)
        return RewardCycle.model_validate(body)

    def submit(self, cycle: Mapping[str, Any] | Path, namespace: str | None = None) -> RewardCycle:
        """Create or update the cycle by server-side apply (field manager ``loka``), checked first against the models
        (InvalidRunError names the field; nothing is sent). ``cycle``: a manifest or a YAML file."""
        source = "the cycle"
        if isinstance(cycle, Path):
            source = str(cycle)
            cycle = parse_manifest(cycle.read_text(), source, CYCLES.kind)
        manifest: JSON = dict(cycle)
        meta = manifest["metadata"] = dict(manifest.get("metadata") or {})
        meta["namespace"] = meta.get("namespace") or namespace or self.connection.namespace
        try:
            RewardCycle.model_validate(manifest)
        except ValidationError as error:
            raise InvalidRunError(f"{source}: {problems(error)}", field=field_of(error)) from error
        response = self._call(
            "applying",
            "",
            meta["namespace"],
            self.connection.custom.patch_namespaced_custom_object,
            *_where(meta["namespace"]),
            meta["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
        )
        return RewardCycle.model_validate(json.loads(response.data))

    def delete(self, name: str, namespace: str | None = None, *, wait: bool = True, timeout: float = 120) -> None:
        """Delete the cycle; its stages go with it (and theirs with them), what they wrote to S3 stays."""
        ns = self._ns(namespace)
        custom = self.connection.custom
        self._call("deleting", name, ns, custom.delete_namespaced_custom_object, *_where(ns), name,
                   propagation_policy="Foreground")  # fmt: skip
        deadline = time.monotonic() + timeout
        while wait and time.monotonic() < deadline:
            try:
                self.get(name, ns)
            except CycleNotFoundError:
                return
            time.sleep(POLL_SECONDS)
        if wait:
            raise WaitTimeoutError(f"RewardCycle {name} is still there after {timeout:.0f}s", None)


def _where(ns: str) -> tuple[str, str, str, str]:
    return CYCLES.group, CYCLES.version, ns, CYCLES.plural
