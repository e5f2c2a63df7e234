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

from loka_trainer.checkpoints import CheckpointStore, ManifestFile
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


def on_nodes(fn: Callable[..., T], *args: Any, skip_current: bool = False) -> list[T]:
    """``fn(*args)`` once on every alive Ray node (pinned, not soft), or here when Ray is not connected."""
    nodes = ray_node_ids()
    if not nodes:
        return [] if skip_current else [fn(*args)]
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = current_node_id() if skip_current else None
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(*args)
        for node in nodes
        if node != here
    ]
    results: list[T] = ray.get(refs)
    return results


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


def stage_on_node(spec_json: str, work_dir: str, endpoint: str | None, resume: tuple[str, int] | None) -> str:
    """Stage the model and data, and restore checkpoint ``resume`` = (run prefix, step), under ``work_dir``."""
    from loka_operator.api import TrainingRunSpec

    from loka_trainer.staging import stage_inputs

    store = ObjectStore(endpoint_url=endpoint)
    root = Path(work_dir)
    stage_inputs(TrainingRunSpec.model_validate_json(spec_json), root, store)
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
