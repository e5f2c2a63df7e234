"""Every Ray node's local disk, reached with one task per node.

In a RayJob the trainer starts on the head pod, verl's driver actor may land on any node, and each rank writes
its checkpoint shards to its own node's ``trainer.default_local_dir``. With no shared volume, the model and data
must be put on every node at the same path, a restored checkpoint's shards on the node whose ranks load them (its
shared files everywhere), and each node uploads the shards it holds. A model that takes work to stage (another
run's checkpoint, downloaded and merged: ``spec.model.fromRun``) is staged once, by the head, and the other nodes
copy the head's folder through Ray's object store.
Without a Ray cluster (tests, the trl engine) the same functions run in this process.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from loka_api.manifest import ManifestFile, Writer
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore, drop_older_local_checkpoints

UPLOAD_SNAPSHOT_FOLDER = ".loka-upload"  # beside verl's global_step_N folders: what a background upload reads
COPY_CHUNK_BYTES = 64 * 1024 * 1024  # one Ray object per chunk of a file copied from another node
COPY_CHUNKS_IN_FLIGHT = 4

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
    return on_each_node(fn, lambda _node: args, skip_current=skip_current)


def on_each_node(
    fn: Callable[..., T], args_for: Callable[[str | None], tuple[Any, ...]], *, skip_current: bool = False
) -> list[T]:
    """``fn(*args_for(node))`` once on every alive Ray node, or ``fn(*args_for(None))`` here without Ray."""
    nodes = ray_node_ids()
    if not nodes:
        return [] if skip_current else [fn(*args_for(None))]
    import ray

    here = current_node_id() if skip_current else None
    results: list[T] = ray.get([_pinned(fn, node).remote(*args_for(node)) for node in nodes if node != here])
    return results


def gpu_rank_layout(
    nodes: list[dict[str, Any]], *, nnodes: int, gpus_per_node: int
) -> dict[str, frozenset[int]] | None:
    """Which of verl's global ranks each Ray node runs, by node id (nodes without GPUs run none).

    verl makes one placement group per node (``trainer.nnodes`` of ``trainer.n_gpus_per_node`` GPU bundles), sorts
    them by node IP (``sort_placement_group_by_node_ip``, so that ranks keep their node across restarts) and numbers
    ranks in that order: node i runs ranks i*g .. i*g+g-1. None when that cannot be told (GPU nodes other than
    ``nnodes``, or two with one IP): every node then restores every shard.
    """
    alive = [n for n in nodes if n.get("Alive")]
    gpu_nodes = [n for n in alive if gpus_per_node > 0 and float(n.get("Resources", {}).get("GPU", 0)) >= gpus_per_node]
    addresses = [str(n["NodeManagerAddress"]) for n in gpu_nodes]
    if len(gpu_nodes) != nnodes or len(set(addresses)) != len(addresses):
        return None
    layout = {str(n["NodeID"]): frozenset[int]() for n in alive}
    for index, node in enumerate(sorted(gpu_nodes, key=lambda n: str(n["NodeManagerAddress"]))):
        layout[str(node["NodeID"])] = frozenset(range(index * gpus_per_node, (index + 1) * gpus_per_node))
    return layout


def ray_rank_layout(*, nnodes: int, gpus_per_node: int) -> dict[str, frozenset[int]] | None:
    """``gpu_rank_layout`` of the Ray cluster this process is connected to (None when it is not)."""
    import ray

    if not ray.is_initialized():
        return None
    return gpu_rank_layout(ray.nodes(), nnodes=nnodes, gpus_per_node=gpus_per_node)  # type: ignore[no-untyped-call]


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
def keeping_sigterm_handler() -> Iterator[None]:
    """Undo what ``ray.init`` does to SIGTERM: it installs ``sys.exit(15)`` over the caller's handler, which
    made the trainer vanish on SIGTERM (exit 15, nothing reported) while verl trained on in its own session.
    A SIGTERM that arrives during ``ray.init`` itself is handed to the caller's handler once it is back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray only replaces the handler from the main thread
        return
    ours = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exit_:
        if exit_.code != signal.SIGTERM:
            raise
        signal.signal(signal.SIGTERM, ours)
        signal.raise_signal(signal.SIGTERM)
        raise ConnectionError("SIGTERM while joining the Ray cluster") from None
    finally:
        signal.signal(signal.SIGTERM, ours)


@contextmanager
def connected_to_ray() -> Iterator[bool]:
    """Join the Ray cluster this process runs in (a RayJob's entrypoint has one), for as long as the block."""
    import ray

    if ray.is_initialized():
        yield True
        return
    try:
        with keeping_sigterm_handler():
            ray.init(address="auto", log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        log.info("no Ray cluster to join (%s): staging on this machine only", type(error).__name__)
        if ray.is_initialized():
            ray.shutdown()
        yield False
        return
    try:
        yield True
    finally:
        ray.shutdown()


def _driver_jobs(driver_pid: int) -> list[Any]:
    """The Ray jobs whose driver was process ``driver_pid`` on this node."""
    import ray
    from ray._private import state  # the GCS tables, without needing the dashboard's state API

    here = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return [
        ray.JobID.from_hex(job["JobID"])
        for job in state.jobs()  # type: ignore[no-untyped-call]
        if job["DriverPid"] == driver_pid and job["DriverIPAddress"] == here
    ]


def _live_actors(jobs: list[Any]) -> dict[str, str]:
    from ray._private import state

    return {
        actor_id: f"{info['ActorClassName']} (pid {info['Pid']}, {info['State']})"
        for job in jobs
        for actor_id, info in state.actors(job_id=job).items()
        if info["State"] != "DEAD"
    }


def wait_for_driver_actors(driver_pid: int, *, timeout: float) -> list[str]:
    """Wait until no actor is left (alive, pending or restarting) in the Ray job(s) whose driver was process
    ``driver_pid`` on this node; returns those still left at the deadline.
    """
    jobs = _driver_jobs(driver_pid)
    deadline = time.monotonic() + timeout
    while True:
        live = _live_actors(jobs)
        if not live or time.monotonic() >= deadline:
            return sorted(live.values())
        time.sleep(0.2)


# ----------------------------------------------------------------------------------- node tasks


def files_under(folder: str) -> list[tuple[str, int]]:
    """The files under ``folder`` on this node: (path relative to it, size), in a stable order."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return [(p.relative_to(root).as_posix(), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]


def read_part(path: str, offset: int, length: int) -> bytes:
    with Path(path).open("rb") as file:
        file.seek(offset)
        return file.read(length)


def copy_folder_from_node(node: str, folder: str) -> int:
    """Copy ``folder`` from Ray node ``node`` to the same path here, replacing what is there, in chunks through
    Ray's object store (a few in flight); returns the bytes copied. The folder appears whole or not at all."""
    import ray

    source, dest = Path(folder), Path(folder)
    partial = dest.with_name(f"{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    files: list[tuple[str, int]] = ray.get(_pinned(files_under, node).remote(folder))
    if not files:
        msg = f"{folder} holds no files on Ray node {node}, which was to have staged it"
        raise FileNotFoundError(msg)
    copied = 0
    for name, size in files:
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            parts: deque[Any] = deque()
            for offset in range(0, size, COPY_CHUNK_BYTES):
                parts.append(_pinned(read_part, node).remote(str(source / name), offset, COPY_CHUNK_BYTES))
                if len(parts) >= COPY_CHUNKS_IN_FLIGHT:
                    out.write(ray.get(parts.popleft()))
            while parts:
                out.write(ray.get(parts.popleft()))
        if target.stat().st_size != size:
            msg = f"copying {source / name} from Ray node {node}: {target.stat().st_size} of {size} bytes arrived"
            raise OSError(msg)
        copied += size
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return copied


def stage_on_node(  # noqa: PLR0917 - a Ray task's arguments travel positionally
    spec_json: str,
    work_dir: str,
    endpoint: str | None,
    resume: tuple[str, int] | None,
    ranks: frozenset[int] | None = None,
    source_uri: str | None = None,
    model_from: str | None = None,
) -> str:
    """Stage the model (``source_uri``: the checkpoint of spec.model.fromRun, its weights whole on every node) and
    data under ``work_dir``, and restore checkpoint ``resume`` = (prefix, step): its shared files and the shards of
    ``ranks`` (the ranks this node runs; None: every shard). ``model_from``: the Ray node that staged the model
    already, at the same path; it is copied from there instead of being downloaded (and merged) again.
    """
    from loka_api import TrainingRunSpec
    from loka_trainer.staging import stage_inputs

    store = ObjectStore(endpoint_url=endpoint)
    root = Path(work_dir)
    model: str | None = None
    if model_from is not None:
        model = str(root / "model")
        copied = copy_folder_from_node(model_from, model)
        log.info("copied the staged model (%.1f MB) from Ray node %s", copied / 1e6, model_from)
    spec = TrainingRunSpec.model_validate_json(spec_json)
    stage_inputs(spec, root, store, source_uri=source_uri, staged_model=model)
    if resume is not None:
        prefix, step = resume
        CheckpointStore(store, S3Uri.parse(prefix), keep=1).restore(step, root / "checkpoints", ranks=ranks)
    import socket

    return socket.gethostname()


def upload_from_node(prefix: str, writer: str, step: int, checkpoint_dir: str) -> tuple[ManifestFile, ...]:
    """Upload the files of ``checkpoint_dir`` this node holds (none is fine: another node has them), then drop
    this node's older local checkpoints: they are in S3 already.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        return ()
    store = CheckpointStore(ObjectStore(), S3Uri.parse(prefix), keep=1, writer=Writer.from_env(writer))
    files = store.upload_folder(step, folder)
    # A background upload reads a snapshot (<checkpoint dir>/.loka-upload/global_step_N); verl's own folders sit above.
    checkpoint_root = folder.parent.parent if folder.parent.name == UPLOAD_SNAPSHOT_FOLDER else folder.parent
    drop_older_local_checkpoints(checkpoint_root, step)
    return files


def link_checkpoint_on_node(checkpoint_dir: str, snapshot_dir: str) -> int:
    """Hard-link the files of ``checkpoint_dir`` this node holds into ``snapshot_dir`` (same relative paths):
    verl may delete its local folder (max_actor_ckpt_to_keep) while the snapshot is still uploading.
    """
    import os
    import shutil

    source, snapshot = Path(checkpoint_dir), Path(snapshot_dir)
    shutil.rmtree(snapshot, ignore_errors=True)  # left by an attempt that died mid-upload
    linked = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else []:
        target = snapshot / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        linked += 1
    return linked


def remove_on_node(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
