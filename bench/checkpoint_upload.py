"""Checkpoint upload and restore throughput against the local MinIO (`make bench-checkpoint`).

Writes a synthetic verl-shaped checkpoint (FSDP shards per rank, HF config, dataloader state; 2 GB by default),
then moves it in the same run four ways each way, rounds interleaved so that load from other processes hits
every method alike:

  upload                                              restore
  plain loop     boto3 upload_file, one file after    boto3 download_file, one file after another
                 another (boto3's defaults)
  boto3 default  one TransferManager over all files   the same, downloading
                 (10 threads, 8 MB parts)
  loka           CheckpointStore.upload: each file    CheckpointStore.restore: parallel download, each
                 read once and hashed as it is sent,  file's sha256 computed as it is written and
                 manifest, conditional marker         checked against the manifest
  raw ceiling    the same bytes as parallel           parallel ranged GETs into the files, nothing
                 multipart PUTs from the files, no    hashed: what this machine and MinIO allow
                 hashing at all (Loka's client, parts
                 and concurrency)

Loka's figures read as a ratio to the plain loop and as a share of the ceiling.
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
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for localcluster, the local control plane

from loka_trainer.checkpoints import CheckpointStore, Writer  # noqa: E402
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


def measure(
    methods: dict[str, Transfer],
    nbytes: int,
    *,
    repeat: int,
    target: Callable[[int, int], tuple[S3Uri, Path]],
    cleanup: Callable[[S3Uri, Path], None],
) -> dict[str, list[float]]:
    """MB/s of every run of every method. Rounds interleave the methods; every run gets a fresh destination
    (MinIO overwrites slower than it creates), emptied untimed afterwards.
    """
    rates: dict[str, list[float]] = {label: [] for label in methods}
    for round_number in range(repeat):
        for index, (label, transfer) in enumerate(methods.items()):
            remote, local = target(round_number, index)
            start = time.perf_counter()
            transfer(remote, local)
            rates[label].append(nbytes / MB / (time.perf_counter() - start))
            cleanup(remote, local)
    return rates


def report(title: str, rates: dict[str, list[float]], nbytes: int) -> dict[str, float]:
    medians = {label: statistics.median(values) for label, values in rates.items()}
    print(title)
    for label, values in rates.items():
        runs = ", ".join(f"{r:.0f}" for r in values)
        print(f"  {label:<16} {nbytes / MB / medians[label]:7.2f} s  {medians[label]:8.1f} MB/s  (runs: {runs})")
    plain, loka, ceiling = medians["plain loop"], medians["loka"], medians["raw ceiling"]
    print(
        f"  loka / plain loop = {loka / plain:.2f}x   loka / boto3 default = {loka / medians['boto3 default']:.2f}x   "
        f"loka / raw ceiling = {loka / ceiling:.0%}"
    )
    return medians


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
        files = files_of(folder)
        names = [p.relative_to(folder).as_posix() for p in files]
        nbytes = sum(p.stat().st_size for p in files)
        load = os.getloadavg()
        print(f"checkpoint: {len(files)} files, {nbytes / MB:.0f} MB; MinIO at {cluster.s3_endpoint}")
        print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
        plain_client = boto3.client("s3", endpoint_url=cluster.s3_endpoint)
        ceiling_config = store.transfer_config()  # Loka's parts and concurrency, over Loka's (unsigned) client

        def many(client: object, config: TransferConfig, submit: Callable[[object, str], object]) -> None:
            manager = create_transfer_manager(client, config)
            futures = [submit(manager, name) for name in names]
            for future in futures:
                future.result()  # type: ignore[attr-defined]
            manager.shutdown()

        # ---- upload
        def up_plain(remote: S3Uri, _local: Path) -> None:
            for name in names:
                plain_client.upload_file(str(folder / name), BUCKET, remote.join(name).key)

        def up_default(remote: S3Uri, _local: Path) -> None:
            many(plain_client, TransferConfig(), lambda m, n: m.upload(str(folder / n), BUCKET, remote.join(n).key))  # type: ignore[attr-defined]

        def up_loka(remote: S3Uri, _local: Path) -> None:
            checkpoints = CheckpointStore(store, remote, keep=3, writer=WRITER)
            checkpoints.claim()
            checkpoints.upload(STEP, folder)

        def up_ceiling(remote: S3Uri, _local: Path) -> None:
            many(store.client, ceiling_config, lambda m, n: m.upload(str(folder / n), BUCKET, remote.join(n).key))  # type: ignore[attr-defined]

        uploads: dict[str, Transfer] = {
            "plain loop": up_plain,
            "boto3 default": up_default,
            "loka": up_loka,
            "raw ceiling": up_ceiling,
        }
        upload_rates = measure(
            uploads,
            nbytes,
            repeat=args.repeat,
            target=lambda r, i: (base.join(f"up-{r}-{i}"), workdir),
            cleanup=lambda remote, _local: store.delete_prefix(remote),
        )
        print()
        report(f"upload (median of {args.repeat}):", upload_rates, nbytes)

        # ---- restore
        source = CheckpointStore(store, base.join("source"), keep=3, writer=WRITER)
        source.claim()
        source.upload(STEP, folder)
        stored = source.step_uri(STEP)

        def down_plain(_remote: S3Uri, local: Path) -> None:
            for name in names:
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                plain_client.download_file(BUCKET, stored.join(name).key, str(local / name))

        def prepared(local: Path) -> None:
            for name in names:
                (local / name).parent.mkdir(parents=True, exist_ok=True)

        def down_default(_remote: S3Uri, local: Path) -> None:
            prepared(local)
            many(plain_client, TransferConfig(), lambda m, n: m.download(BUCKET, stored.join(n).key, str(local / n)))  # type: ignore[attr-defined]

        def down_loka(_remote: S3Uri, local: Path) -> None:
            source.restore(STEP, local)

        def down_ceiling(_remote: S3Uri, local: Path) -> None:
            prepared(local)
            many(store.client, ceiling_config, lambda m, n: m.download(BUCKET, stored.join(n).key, str(local / n)))  # type: ignore[attr-defined]

        restores: dict[str, Transfer] = {
            "plain loop": down_plain,
            "boto3 default": down_default,
            "loka": down_loka,
            "raw ceiling": down_ceiling,
        }
        restore_rates = measure(
            restores,
            nbytes,
            repeat=args.repeat,
            target=lambda r, i: (stored, workdir / f"down-{r}-{i}"),
            cleanup=lambda _remote, local: shutil.rmtree(local, ignore_errors=True),
        )
        print()
        report(f"restore (median of {args.repeat}):", restore_rates, nbytes)
        load = os.getloadavg()
        print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        store.delete_prefix(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
