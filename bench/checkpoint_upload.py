"""Checkpoint upload and restore throughput against the local MinIO (`make bench-checkpoint`).

Writes a synthetic verl-shaped checkpoint (FSDP shards per rank, HF config, dataloader state; 2 GB by default),
then moves it in the same run four ways each way, rounds interleaved so that load from other processes hits
every method alike:

  upload                                              restore
  plain loop     boto3 upload_file, one file after    boto3 download_file, one file after another
                 another (boto3's defaults)
  boto3 default  one TransferManager over all files   the same, downloading
                 (10 threads, 8 MB parts)
  loka           CheckpointStore.upload: each file    CheckpointStore.restore: the parallel download,
                 read once and hashed as it is sent   each file's sha256 computed as soon as it has
                 in parallel parts, then manifest     landed (while the others arrive) and checked
                 and conditional marker               against the manifest
  raw ceiling    the same bytes as parallel           parallel ranged GETs into the files, nothing
                 multipart PUTs from the files, no    hashed: what this machine and MinIO allow
                 hashing at all (Loka's client, parts
                 and concurrency)

Loka's figures read as a ratio to the plain loop and as a share of the ceiling. The CPU column (this process
and the MinIO server, per GB moved) reads steadier than MB/s on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for localcluster, the local control plane

from loka_api.manifest import Writer  # noqa: E402
from loka_trainer.checkpoints import CheckpointStore  # noqa: E402
from loka_trainer.storage import ObjectStore, S3Uri  # noqa: E402

MB = 1_000_000
BUCKET = "loka"
STEP = 100
WRITER = Writer(1, "bench")


def write_checkpoint(root: Path, total_bytes: int, world_size: int = 16) -> Path:
    """verl's global_step_N layout: model and optimizer shards per rank (2:1 like Adam's state), small extras."""
    folder = root / f"global_step_{STEP}"
    actor = folder / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model_bytes = total_bytes // (3 * world_size)
    block = os.urandom(8 * 1024 * 1024)
    for rank in range(world_size):
        for kind, size in (("model", model_bytes), ("optim", 2 * model_bytes)):
            with (actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt").open("wb") as handle:
                written = 0
                while written < size:
                    # A rank-specific prefix keeps blocks distinct, so no layer can deduplicate them.
                    chunk = (f"{kind}{rank}:{written}".encode() + block)[: min(len(block), size - written)]
                    handle.write(chunk)
                    written += len(chunk)
        (actor / f"extra_state_world_size_{world_size}_rank_{rank}.pt").write_bytes(os.urandom(14_000))
    (actor / "fsdp_config.json").write_text(f'{{"FSDP_version": 2, "world_size": {world_size}}}')
    (actor / "huggingface" / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "data.pt").write_bytes(os.urandom(1500))
    return folder


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


Transfer = Callable[[S3Uri, Path], object]


@dataclass
class Runs:
    """Every run of one method: its throughput, and the CPU it cost this process and MinIO per GB moved."""

    rates: list[float] = field(default_factory=list)
    cpu_per_gb: list[float] = field(default_factory=list)


def process_cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of ``pid`` so far (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    methods: dict[str, Transfer],
    nbytes: int,
    *,
    repeat: int,
    target: Callable[[int, int], tuple[S3Uri, Path]],
    cleanup: Callable[[S3Uri, Path], object],
    minio_pid: int | None,
) -> dict[str, Runs]:
    """Every run of every method. Rounds interleave the methods; every run gets a fresh destination (MinIO
    overwrites slower than it creates), emptied untimed afterwards. CPU is counted for this process (every
    thread) and the MinIO server: on a shared machine it reads steadier than wall-clock throughput.
    """
    runs: dict[str, Runs] = {label: Runs() for label in methods}
    for round_number in range(repeat):
        for index, (label, transfer) in enumerate(methods.items()):
            remote, local = target(round_number, index)
            cpu, server, start = time.process_time(), process_cpu_seconds(minio_pid), time.perf_counter()
            transfer(remote, local)
            elapsed = time.perf_counter() - start
            used = time.process_time() - cpu + process_cpu_seconds(minio_pid) - server
            runs[label].rates.append(nbytes / MB / elapsed)
            runs[label].cpu_per_gb.append(used / (nbytes / 1e9))
            cleanup(remote, local)
    return runs


def report(title: str, runs: dict[str, Runs], nbytes: int) -> None:
    medians = {label: statistics.median(r.rates) for label, r in runs.items()}
    print(title)
    print(f"  {'method':<16} {'time':>7}  {'MB/s':>8}  {'CPU s/GB':>8}  runs (MB/s)")
    for label, r in runs.items():
        cpu = statistics.median(r.cpu_per_gb)
        rates = ", ".join(f"{rate:.0f}" for rate in r.rates)
        print(f"  {label:<16} {nbytes / MB / medians[label]:6.2f}s  {medians[label]:8.1f}  {cpu:8.2f}  {rates}")
    plain, loka, ceiling = medians["plain loop"], medians["loka"], medians["raw ceiling"]
    print(
        f"  loka / plain loop = {loka / plain:.2f}x   loka / boto3 default = {loka / medians['boto3 default']:.2f}x   "
        f"loka / raw ceiling = {loka / ceiling:.0%}"
    )


class Methods:
    """The four ways to move one checkpoint folder, each way."""

    def __init__(self, store: ObjectStore, folder: Path, endpoint: str) -> None:
        self.store = store
        self.folder = folder
        self.names = [p.relative_to(folder).as_posix() for p in files_of(folder)]
        self.plain = boto3.client("s3", endpoint_url=endpoint)  # boto3's defaults, as a user would
        self.ceiling = store.transfer_config()  # Loka's parts and concurrency, over Loka's (unsigned) client

    def _many(self, client: Any, config: TransferConfig, submit: Callable[[Any, str], Any]) -> None:
        manager = create_transfer_manager(client, config)
        futures = [submit(manager, name) for name in self.names]
        for future in futures:
            future.result()
        manager.shutdown()

    def _folders(self, local: Path) -> None:
        for name in self.names:
            (local / name).parent.mkdir(parents=True, exist_ok=True)

    def uploads(self) -> dict[str, Transfer]:
        folder, names = self.folder, self.names

        def plain(remote: S3Uri, _local: Path) -> None:
            for name in names:
                self.plain.upload_file(str(folder / name), BUCKET, remote.join(name).key)

        def default(remote: S3Uri, _local: Path) -> None:
            self._many(self.plain, TransferConfig(), lambda m, n: m.upload(str(folder / n), BUCKET, remote.join(n).key))

        def loka(remote: S3Uri, _local: Path) -> None:
            checkpoints = CheckpointStore(self.store, remote, keep=3, writer=WRITER)
            checkpoints.claim()
            checkpoints.upload(STEP, folder)

        def ceiling(remote: S3Uri, _local: Path) -> None:
            self._many(
                self.store.client, self.ceiling, lambda m, n: m.upload(str(folder / n), BUCKET, remote.join(n).key)
            )

        return {"plain loop": plain, "boto3 default": default, "loka": loka, "raw ceiling": ceiling}

    def restores(self, source: CheckpointStore) -> dict[str, Transfer]:
        stored, names = source.step_uri(STEP), self.names

        def plain(_remote: S3Uri, local: Path) -> None:
            self._folders(local)
            for name in names:
                self.plain.download_file(BUCKET, stored.join(name).key, str(local / name))

        def default(_remote: S3Uri, local: Path) -> None:
            self._folders(local)
            self._many(
                self.plain, TransferConfig(), lambda m, n: m.download(BUCKET, stored.join(n).key, str(local / n))
            )

        def loka(_remote: S3Uri, local: Path) -> None:
            source.restore(STEP, local)

        def ceiling(_remote: S3Uri, local: Path) -> None:
            self._folders(local)
            self._many(
                self.store.client, self.ceiling, lambda m, n: m.download(BUCKET, stored.join(n).key, str(local / n))
            )

        return {"plain loop": plain, "boto3 default": default, "loka": loka, "raw ceiling": ceiling}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="synthetic checkpoint size (2)")
    parser.add_argument("--shards", type=int, default=16, help="ranks; each writes a model and an optimizer shard")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median is reported (3)")
    args = parser.parse_args(argv)

    from localcluster.controlplane import LocalCluster

    cluster = LocalCluster(echo=lambda _line: None)
    if not cluster.is_up():
        print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
        return 1
    os.environ.update(cluster.env)

    base = S3Uri(BUCKET, f"bench/checkpoint-{uuid.uuid4().hex[:8]}")
    store = ObjectStore()
    workdir = Path(tempfile.mkdtemp(prefix="loka-bench-"))
    try:
        folder = write_checkpoint(workdir, int(args.size_gb * 1e9), world_size=args.shards)
        methods = Methods(store, folder, cluster.s3_endpoint)
        nbytes = sum(p.stat().st_size for p in files_of(folder))
        print(f"checkpoint: {len(methods.names)} files, {nbytes / MB:.0f} MB; MinIO at {cluster.s3_endpoint}")
        print(f"load average at start: {load()}")

        pidfile = cluster.layout.pids / "minio.pid"
        minio_pid = int(pidfile.read_text()) if pidfile.exists() else None
        runs = measure(
            methods.uploads(),
            nbytes,
            repeat=args.repeat,
            target=lambda r, i: (base.join(f"up-{r}-{i}"), workdir),
            cleanup=lambda remote, _local: store.delete_prefix(remote),
            minio_pid=minio_pid,
        )
        print()
        report(f"upload (median of {args.repeat}; CPU: this process and MinIO):", runs, nbytes)

        source = CheckpointStore(store, base.join("source"), keep=3, writer=WRITER)
        source.claim()
        source.upload(STEP, folder)
        runs = measure(
            methods.restores(source),
            nbytes,
            repeat=args.repeat,
            target=lambda r, i: (source.prefix, workdir / f"down-{r}-{i}"),
            cleanup=lambda _remote, local: shutil.rmtree(local, ignore_errors=True),
            minio_pid=minio_pid,
        )
        print()
        report(f"restore (median of {args.repeat}; CPU: this process and MinIO):", runs, nbytes)
        print(f"\nload average at end: {load()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        store.delete_prefix(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
