"""Two Ray nodes as a multi-node RayJob has them, on one host: each with a node address of its own (the host's, and
127.0.0.2), two GPUs declared to Ray, and a local disk of its own (the second raylet runs in a mount namespace
where the checkpoint folder is a different directory), so Loka's per-node checkpoint paths run as on two machines.

verl needs real GPUs to train, so the ranks' shards are written the way FSDP writes them (each rank to its own
node's disk, rank 0 the shared files); what is tested is Loka's own code on top: the rank layout it derives from
Ray, the per-node upload of the checkpoint callback and the per-node restore of staging.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_api.manifest import Writer
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.engines import EngineJob
from loka_trainer.engines.verl import stage_other_nodes
from loka_trainer.nodes import on_each_node, ray_rank_layout, stage_on_node
from loka_trainer.staging import stage_inputs
from loka_trainer.verl_callback import upload_from_every_node


def _can_unshare_mounts() -> bool:
    """Whether this machine lets us give a process a mount namespace of its own (root, or CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not _can_unshare_mounts(), reason="needs unshare(1) with mount rights for the second node's disk"
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
GPUS_PER_NODE = 2
# Ray gives a head started on 127.0.0.1 the host's address (it resolves localhost); the second node keeps its own.
HEAD_ADDRESS, WORKER_ADDRESS = "127.0.0.1", "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HEAD_ADDRESS, 0))
        return int(probe.getsockname()[1])


def _stop_session(process: subprocess.Popen[bytes]) -> None:
    """End a `ray start --block` and every process of its session (raylet, GCS, workers), by its process group."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 15.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.wait()
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def two_hosts(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``work``: the folder every node sees as its own disk; on the head it is ``a`` itself, on 127.0.0.2 ``b``."""
    import ray

    root = tmp_path_factory.mktemp("two-hosts")
    work, disk_b = root / "work", root / "disk-b"
    work.mkdir()
    disk_b.mkdir()
    port = _free_port()
    env = {**os.environ, **{k: v for k, v in cluster.env.items() if k.startswith("AWS_")}}
    env |= {"AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--block", "--num-cpus=2", f"--num-gpus={GPUS_PER_NODE}", "--disable-usage-stats"]
    address = f"{HEAD_ADDRESS}:{port}"
    head = [ray_cli, "start", "--head", f"--node-ip-address={HEAD_ADDRESS}", f"--port={port}",
            "--include-dashboard=false", *common]  # fmt: skip
    # The second node: its own address, and its own disk where the others see `work`.
    join = [ray_cli, "start", f"--address={address}", f"--node-ip-address={WORKER_ADDRESS}", *common]
    own_disk = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "{disk_b}" "{work}" && exec "$@"', "sh"]  # fmt: skip
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(_start_node(head, env, address, 1, root / "head.log"))
        started.append(_start_node([*own_disk, *join], env, address, 2, root / "worker.log"))
        ray.init(
            address=address,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
        )
        try:
            yield {"work": work, "a": work, "b": disk_b}
        finally:
            ray.shutdown()
    finally:
        for process in reversed(started):
            _stop_session(process)


def _start_node(
    command: list[str], env: dict[str, str], address: str, count: int, log: Path
) -> subprocess.Popen[bytes]:
    """`ray start --block` in a session of its own, once Ray reports ``count`` nodes alive. Ray gives a raylet a fixed
    30 s to register with the GCS; on a loaded machine it can miss that, and `ray start` then exits: start it again.
    """
    for _attempt in range(3):
        process = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        if _wait_for_nodes(address, count, process):
            return process
        _stop_session(process)
    tail = log.read_text(errors="replace")[-3000:]
    pytest.fail(f"`ray start` did not bring node {count} up after 3 tries:\n{tail}")


def _wait_for_nodes(address: str, count: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether Ray reports ``count`` alive nodes at ``address`` before ``process`` (`ray start`) exits."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            alive = subprocess.run(
                [sys.executable, "-c", probe, address], capture_output=True, text=True, check=False, timeout=60
            ).stdout.strip()
        except subprocess.TimeoutExpired:  # the head's GCS is not answering yet
            continue
        if alive.isdigit() and int(alive) >= count:
            return True
        time.sleep(1)
    return False


def write_rank_shards(checkpoint_dir: str, ranks: list[int], world_size: int) -> str:
    """What verl's FSDP ranks write on one node: each rank its shards; rank 0 the shared files. Returns the node IP."""
    import ray

    actor = Path(checkpoint_dir) / "actor"
    actor.mkdir(parents=True, exist_ok=True)
    for rank in ranks:
        for kind in ("model", "optim", "extra_state"):
            (actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt").write_bytes(f"{kind}-{rank}".encode() * 512)
    if 0 in ranks:
        (actor / "huggingface").mkdir(exist_ok=True)
        (actor / "huggingface" / "config.json").write_text('{"model_type": "qwen2"}')
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world_size}))
        (Path(checkpoint_dir) / "data.pt").write_bytes(b"dataloader state")
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def local_files(folder: str) -> tuple[str, list[str]]:
    """This node's address and the files under ``folder`` on its own disk."""
    import ray

    root = Path(folder)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return str(ray.util.get_node_ip_address()), files  # type: ignore[no-untyped-call]


def wipe(folder: str) -> None:
    """Empty ``folder`` and keep it: it is the second node's mount point, which a removal in another namespace
    would detach (and that node would then write to the first one's disk)."""
    for child in Path(folder).iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def shards(files: list[str]) -> list[str]:
    return sorted(Path(f).name for f in files if "_rank_" in f)


def test_each_node_uploads_and_restores_only_the_shards_of_its_own_ranks(
    two_hosts: dict[str, Path], object_store: ObjectStore, s3_prefix: S3Uri
) -> None:
    nodes = 2
    world_size = nodes * GPUS_PER_NODE
    layout = ray_rank_layout(nnodes=nodes, gpus_per_node=GPUS_PER_NODE)
    assert layout is not None, "two GPU nodes with addresses of their own must give verl's rank placement"
    ranks_by_address = {address: sorted(layout[node]) for node, address in ((n, _address_of(n)) for n in layout)}
    assert len(ranks_by_address) == nodes
    assert WORKER_ADDRESS in ranks_by_address
    first, second = sorted(ranks_by_address)  # verl places ranks on nodes sorted by node IP
    assert (ranks_by_address[first], ranks_by_address[second]) == ([0, 1], [2, 3])

    checkpoint_dir = two_hosts["work"] / "checkpoints" / "global_step_4"
    on_each_node(write_rank_shards, lambda node: (str(checkpoint_dir), sorted(layout[node or ""]), world_size))
    run_prefix = s3_prefix.join("ns", "two-node-run", "uid-1")
    store = CheckpointStore(object_store, run_prefix, keep=2, writer=Writer(1, "two-node-run-a1b2c"))
    store.claim()

    record = upload_from_every_node(store, 4, str(checkpoint_dir))

    assert record.step == 4
    manifest = store.manifest(4)
    assert manifest is not None
    assert shards([f.path for f in manifest.files]) == sorted(
        f"{kind}_world_size_{world_size}_rank_{rank}.pt"
        for kind in ("extra_state", "model", "optim")
        for rank in range(4)
    )
    assert store.marker_step() == 4

    # A resume: every node's disk is empty, then staging restores on each node its ranks' shards and the shared files.
    on_each_node(wipe, lambda _node: (str(two_hosts["work"]),))
    spec = {
        "image": "x",
        "model": {"uri": str(s3_prefix.join("model"))},
        "data": {"train": str(s3_prefix.join("train.parquet"))},
    }
    object_store.put_bytes(s3_prefix.join("model", "config.json"), b'{"model_type": "qwen2"}')
    object_store.put_bytes(s3_prefix.join("train.parquet"), b"PAR1 train")
    on_each_node(
        stage_on_node,
        lambda node: (json.dumps(spec), str(two_hosts["work"]), None, (str(run_prefix), 4), layout[node or ""]),
    )

    restored = dict(on_each_node(local_files, lambda _node: (str(checkpoint_dir),)))
    for address, ranks in ranks_by_address.items():
        assert shards(restored[address]) == sorted(
            f"{kind}_world_size_{world_size}_rank_{rank}.pt"
            for kind in ("extra_state", "model", "optim")
            for rank in ranks
        ), f"node {address} must hold the shards of ranks {ranks} only"
        assert "actor/huggingface/config.json" in restored[address]
        assert "data.pt" in restored[address]


def _address_of(node_id: str) -> str:
    import ray

    return next(str(n["NodeManagerAddress"]) for n in ray.nodes() if n["NodeID"] == node_id)  # type: ignore[no-untyped-call]


def model_digests(folder: str) -> tuple[str, dict[str, str]]:
    """This node's address and the sha256 of each file under ``folder`` on its own disk."""
    import ray

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    digests = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return str(ray.util.get_node_ip_address()), digests  # type: ignore[no-untyped-call]


def test_a_source_runs_checkpoint_is_staged_once_and_the_other_nodes_copy_the_heads_model(
    two_hosts: dict[str, Path], object_store: ObjectStore, s3_prefix: S3Uri, tmp_path: Path
) -> None:
    """spec.model.fromRun: the head downloads (and, for verl's shards, merges) the source's checkpoint once; the
    other nodes copy the head's model folder instead of fetching and merging it again. Shown by removing the
    checkpoint from S3 once the head staged it: the other node still gets the head's weights, byte for byte."""
    work = two_hosts["work"]
    on_each_node(wipe, lambda _node: (str(work),))
    step_folder = tmp_path / "global_step_3"
    weights = step_folder / "actor" / "huggingface"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text('{"model_type": "qwen2"}')
    (weights / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    source = CheckpointStore(
        object_store, s3_prefix.join("ns", "source", "uid-0"), keep=2, writer=Writer(1, "source-a1b2c")
    )
    source.claim()
    source.upload(3, step_folder)
    train = s3_prefix.join("train.parquet")
    object_store.put_bytes(train, b"PAR1 train")
    spec = TrainingRunSpec.model_validate(
        {"image": "x", "model": {"fromRun": {"name": "source"}}, "data": {"train": str(train)}}
    )
    uri = str(source.step_uri(3))

    inputs = stage_inputs(spec, work, object_store, source_uri=uri)  # the head, as the runner stages
    object_store.delete_prefix(source.prefix)  # from here on only the head has the weights
    stage_other_nodes(
        EngineJob(
            spec=spec,
            run_name="dependent",
            namespace="ns",
            inputs=inputs,
            work_dir=work,
            checkpoint_dir=work / "checkpoints",
            metrics_file=work / "metrics.jsonl",
            checkpoints=None,
            resume=None,
            on_checkpoint=lambda _record: None,
            stop=threading.Event(),
            wandb_mode="disabled",
            source_uri=uri,
        )
    )

    models = dict(on_each_node(model_digests, lambda _node: (str(work / "model"),)))
    assert len(models) == 2
    expected = {
        name: hashlib.sha256((weights / name).read_bytes()).hexdigest() for name in ("config.json", "model.safetensors")
    }
    for address, digests in models.items():
        assert digests == expected, f"node {address} must hold the source's weights"
