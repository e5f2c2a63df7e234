"""Checkpoint upload and restore throughput against the local MinIO (`make bench-checkpoint`).

Writes a synthetic verl-shaped checkpoint (FSDP shards per rank, HF config, dataloader state; 2 GB by default),
then uploads it in the same run three ways:

  plain loop     boto3 ``client.upload_file`` for one file after another (each with boto3's default config)
  boto3 default  one boto3 TransferManager over all files with the default TransferConfig (10 threads, 8 MB)
  loka           Loka's CheckpointStore.upload: all files in parallel, 64 MB parts, sha256 manifest, marker

and finally times a resume: CheckpointStore.restore (parallel download plus sha256 verification of every file).
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

from loka_trainer.checkpoints import CheckpointStore  # noqa: E402
from loka_trainer.storage import ObjectStore, S3Uri  # noqa: E402

MB = 1_000_000
BUCKET = "loka"


def write_checkpoint(root: Path, total_bytes: int, world_size: int = 16) -> Path:
    """verl's global_step_N layout: model and optimizer shards per rank (2:1 like Adam's state), small extras."""
    folder = root / "global_step_100"
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


Upload = Callable[[S3Uri], object]


def measure(
    methods: dict[str, Upload], nbytes: int, *, base: S3Uri, store: ObjectStore, repeat: int
) -> dict[str, float]:
    """Median MB/s per method. Rounds interleave the methods so load from other processes hits them alike, and
    every run writes to a fresh prefix (emptied untimed afterwards): MinIO overwrites slower than it creates.
    """
    rates: dict[str, list[float]] = {label: [] for label in methods}
    for round_number in range(repeat):
        for index, (label, upload) in enumerate(methods.items()):
            target = base.join(f"round{round_number}-method{index}")
            start = time.perf_counter()
            upload(target)
            rates[label].append(nbytes / MB / (time.perf_counter() - start))
            store.delete_prefix(target)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    for label, values in rates.items():
        runs = ", ".join(f"{r:.0f}" for r in values)
        print(f"  {label:<34} {nbytes / MB / medians[label]:7.2f} s  {medians[label]:8.1f} MB/s  (runs: {runs})")
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

    run_id = uuid.uuid4().hex[:8]
    base = S3Uri(BUCKET, f"bench/checkpoint-{run_id}")
    store = ObjectStore()
    workdir = Path(tempfile.mkdtemp(prefix="loka-bench-"))
    try:
        folder = write_checkpoint(workdir, int(args.size_gb * 1e9), world_size=args.shards)
        files = files_of(folder)
        nbytes = sum(p.stat().st_size for p in files)
        print(f"checkpoint: {len(files)} files, {nbytes / MB:.0f} MB; MinIO at {cluster.s3_endpoint}")
        plain_client = boto3.client("s3", endpoint_url=cluster.s3_endpoint)

        def plain_loop(target: S3Uri) -> None:
            for path in files:
                plain_client.upload_file(str(path), BUCKET, target.join(path.relative_to(folder).as_posix()).key)

        def boto3_default(target: S3Uri) -> None:
            manager = create_transfer_manager(plain_client, TransferConfig())
            futures = [manager.upload(str(p), BUCKET, target.join(p.relative_to(folder).as_posix()).key) for p in files]
            for future in futures:
                future.result()
            manager.shutdown()

        def loka(target: S3Uri) -> None:
            CheckpointStore(store, target, keep=3).upload(100, folder)

        print(f"upload (median of {args.repeat}):")
        methods: dict[str, Upload] = {
            "plain upload_file loop": plain_loop,
            "boto3 TransferManager, defaults": boto3_default,
            "loka (with sha256 manifest)": loka,
        }
        rates = measure(methods, nbytes, base=base, store=store, repeat=args.repeat)
        plain_rate, default_rate, loka_rate = rates.values()
        print(
            f"  loka / plain loop = {loka_rate / plain_rate:.2f}x   "
            f"loka / boto3 default = {loka_rate / default_rate:.2f}x"
        )
        print("resume:")
        checkpoints = CheckpointStore(store, base.join("resume"), keep=3)
        checkpoints.upload(100, folder)
        start = time.perf_counter()
        checkpoints.restore(100, workdir / "restore")
        seconds = time.perf_counter() - start
        print(f"  {'loka restore (download + verify)':<34} {seconds:7.2f} s  {nbytes / MB / seconds:8.1f} MB/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        store.delete_prefix(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
