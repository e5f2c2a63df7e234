"""Every Ray node's local disk, reached with one task per node.

In a RayJob the trainer starts on the head pod, verl's driver actor may land on any node, and each rank writes
its checkpoint shards to its own node's ``trainer.default_local_dir``. With no shared volume, the model, data
and a restored checkpoint must be put on every node at the same path, and each node uploads the shards it holds.
Without a Ray cluster (tests, the trl engine) the same functions run in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from loka_api.manifest import ManifestFile
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.storage import ObjectStore, S3Uri

log = logging.getLogger(__name__)

T = TypeVar("T")


def ray_node_ids() -> list[str]:
    """Alive nodes of the Ray cluster this process is connected to; empty when it is not connected."""
    import ray

    if not ray.is_initialized():
        return []
    return sorted(node["NodeID"] for node in ray.nodes() if node.get("Alive"))  # type: ignore[no-untyped-call]


def current_node_id() -> str | None:
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None


def _pinned(fn: Callable[..., T], node: str) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    return task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))


def on_nodes(fn: Callable[..., T], *args: Any, skip_current: bool = False) -> list[T]:
    """``fn(*args)`` once on every alive Ray node (pinned, not soft), or here when Ray is not connected."""
    nodes = ray_node_ids()
    if not nodes:
        return [] if skip_current else [fn(*args)]
    import ray

    here = current_node_id() if skip_current else None
    results: list[T] = ray.get([_pinned(fn, node).remote(*args) for node in nodes if node != here])
    return results


class FileOnAnyNode:
    """A metrics FileReader for a file written on some Ray node (verl's driver actor may run on a worker):
    this machine first, else the node that has it, found once and then read directly.
    """

    def __init__(self, local_reader: Callable[[str, int], tuple[int, bytes]] | None = None) -> None:
        self.node: str | None = None
        self._local_reader = local_reader

    def __call__(self, path: str, offset: int) -> tuple[int, bytes]:
        import ray

        from loka_trainer.step_metrics import read_local

        if self.node is None:
            size, chunk = (self._local_reader or read_local)(path, offset)
            if size >= 0 or not ray.is_initialized():
                return size, chunk
            found: list[tuple[str, tuple[int, bytes]]] = [
                (node, ray.get(_pinned(read_local, node).remote(path, offset))) for node in ray_node_ids()
            ]
            holders = [(node, result) for node, result in found if result[0] >= 0]
            if not holders:
                return -1, b""
            self.node, first = max(holders, key=lambda holder: holder[1][0])
            log.info("following verl's metrics on Ray node %s", self.node)
            return first
        if not ray.is_initialized():  # left the cluster: never let a Ray call start a local one
            return -1, b""
        size, chunk = ray.get(_pinned(read_local, self.node).remote(path, offset))
        return int(size), bytes(chunk)


@contextmanager
def connected_to_ray() -> Iterator[bool]:
    """Join the Ray cluster this process runs in (a RayJob's entrypoint has one), for as long as the block."""
    import ray

    if ray.is_initialized():
        yield True
        return
    try:
        ray.init(address="auto", log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        log.info("no Ray cluster to join (%s): staging on this machine only", type(error).__name__)
        yield False
        return
    try:
        yield True
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------- node tasks


def stage_on_node(
    spec_json: str,
    work_dir: str,
    endpoint: str | None,
    resume: tuple[str, int] | None,
    source_uri: str | None = None,
) -> str:
    """Stage the model (``source_uri``: the checkpoint of spec.model.fromRun) and data, and restore checkpoint
    ``resume`` = (run prefix, step), under ``work_dir``.
    """
    from loka_api import TrainingRunSpec
    from loka_trainer.staging import stage_inputs

    store = ObjectStore(endpoint_url=endpoint)
    root = Path(work_dir)
    stage_inputs(TrainingRunSpec.model_validate_json(spec_json), root, store, source_uri=source_uri)
    if resume is not None:
        prefix, step = resume
        CheckpointStore(store, S3Uri.parse(prefix), keep=1).restore(step, root / "checkpoints")
    import socket

    return socket.gethostname()


def upload_from_node(prefix: str, keep: int, step: int, checkpoint_dir: str) -> tuple[ManifestFile, ...]:
    """Upload the files of ``checkpoint_dir`` this node holds (none is fine: another node has them)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        return ()
    return CheckpointStore(ObjectStore(), S3Uri.parse(prefix), keep=keep).upload_folder(step, folder)
