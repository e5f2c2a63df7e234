"""Checkpoint upload and restore throughput against the local MinIO (`make bench-checkpoint`), or any S3
endpoint (``--endpoint``, keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: the GPU machine's MinIO).

Writes a synthetic checkpoint of ``--size`` bytes (2GB by default; 10GB and more on a big machine),
``--layout large`` (verl's FSDP shards per rank, HF config, dataloader state: few large files, ``--files`` of
them, 32 by default) or ``--layout small`` (the same bytes as many files, ``--files`` of them, 4 MB each by
default), then moves it in the same run every way below, rounds interleaved so that load from other processes
hits every method alike:

  upload                                              restore
  plain loop     boto3 upload_file, one file after    boto3 download_file, one file after another
                 another (boto3's defaults)
  boto3 default  one TransferManager over all files   the same, downloading
                 (10 threads, 8 MB parts)
  loka           CheckpointStore.upload: each file    CheckpointStore.restore: parallel ranged GETs,
                 read once into parallel parts, each  each range's CRC64NVME computed as it lands,
                 with its CRC64NVME (awscrt, native)  combined per file and checked against the
                 that MinIO verifies, the parts'      manifest
                 combined into the file's (verified
                 again on completion); then manifest
                 and conditional marker
  raw s3transfer the same bytes as boto3's            the same, downloading: parallel ranged GETs
                 TransferManager moves them with
                 Loka's parts and concurrency, no
                 checksum at all
  raw loka       Loka's own transfer (the same        Loka's ranged GETs, nothing checksummed
                 requests) with no checksum
  raw ceiling    the faster of the two raw rows: what this machine and MinIO allow

  aws crt        the AWS Common Runtime's S3 client (awscrt, native code, its own parallel parts), one request
                 per file, all in flight at once; no checksum of the bytes either way
  s5cmd          the Go client (`s5cmd cp`, its default workers), built from its Go module into ~/.cache/loka
                 (`python -m localcluster.build s5cmd`); no checksum of the bytes either way

Only Loka checks every file's integrity (its CRC64NVME against the manifest) on restore, and has MinIO verify
every part and file on upload. A method whose client is not
installed (awscrt, s5cmd) is left out and named. Loka's figures read as a ratio to the plain loop and as a share
of the ceiling. The CPU column (this process and the MinIO server, per GB moved) reads steadier than MB/s on a
shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for localcluster, the local control plane
for _package in ("api", "trainer-image"):  # a checkout that was not installed (the GPU machine's copy)
    sys.path.insert(1, str(REPO / _package))
try:
    import pydantic  # noqa: F401  (the core's models need it; the S3 layer and the checkpoint writer do not)
except ImportError:  # only boto3, botocore and awscrt installed: load loka_api's modules without its models
    import types

    _core = types.ModuleType("loka_api")
    _core.__path__ = [str(REPO / "api" / "loka_api")]
    sys.modules["loka_api"] = _core

from loka_api.manifest import Writer  # noqa: E402
from loka_api.storage import ObjectStore, S3Uri  # noqa: E402
from loka_trainer.checkpoints import CheckpointStore  # noqa: E402

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


def write_small_files(root: Path, total_bytes: int, file_bytes: int = 4_000_000) -> Path:
    """The same bytes as many small files (a tokenizer-and-shards folder, per-rank extras, optimizer pieces)."""
    folder = root / f"global_step_{STEP}"
    block = os.urandom(file_bytes)
    for index in range(max(total_bytes // file_bytes, 1)):
        part = folder / f"part-{index // 100:03d}" / f"piece-{index:05d}.bin"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(f"{index}:".encode() + block[: file_bytes - 8])
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


def own_cpu_seconds() -> float:
    """This process's CPU (every thread, native ones included) and its finished children's (s5cmd)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


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
            cpu, server, start = own_cpu_seconds(), process_cpu_seconds(minio_pid), time.perf_counter()
            transfer(remote, local)
            elapsed = time.perf_counter() - start
            used = own_cpu_seconds() - cpu + process_cpu_seconds(minio_pid) - server
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
    loka = medians["loka"]
    raw = {label: rate for label, rate in medians.items() if label.startswith("raw ")}
    ceiling_label = max(raw, key=lambda label: raw[label])
    others = ", ".join(f"loka / {label} = {loka / rate:.2f}x" for label, rate in medians.items()
                       if label != "loka" and label not in raw)  # fmt: skip
    print(f"  {others}")
    best = raw[ceiling_label]
    print(f"  raw ceiling {best:.1f} MB/s ({ceiling_label}); loka / raw ceiling = {loka / best:.0%}")


class Methods:
    """The four ways to move one checkpoint folder, each way."""

    def __init__(self, store: ObjectStore, folder: Path, endpoint: str) -> None:
        self.store = store
        self.folder = folder
        self.endpoint = endpoint
        self.names = [p.relative_to(folder).as_posix() for p in files_of(folder)]
        self.plain = boto3.client("s3", endpoint_url=endpoint)  # boto3's defaults, as a user would
        self.ceiling = store.transfer_config()  # Loka's parts and concurrency, over Loka's (unsigned) client
        self.crt = crt_client(endpoint)
        self.s5cmd = s5cmd_binary()
        self.missing = [name for name, found in (("aws crt", self.crt), ("s5cmd", self.s5cmd)) if found is None]

    def _crt_all(self, requests: list[tuple[str, str, str]]) -> None:
        """(method, key, local path) for every file, all in flight at once on the CRT client."""
        from awscrt.http import HttpHeaders, HttpRequest  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from awscrt.s3 import S3RequestType  # type: ignore[import-untyped,import-not-found,unused-ignore]

        assert self.crt is not None
        client, host = self.crt
        pending = []
        for method, key, path in requests:
            headers = [("Host", host)]
            if method == "PUT":
                headers.append(("Content-Length", str(Path(path).stat().st_size)))
            request = HttpRequest(method, f"/{BUCKET}/{key}", HttpHeaders(headers))
            kind = S3RequestType.PUT_OBJECT if method == "PUT" else S3RequestType.GET_OBJECT
            files = {"send_filepath": path} if method == "PUT" else {"recv_filepath": path}
            pending.append(client.make_request(type=kind, request=request, **files))
        for request in pending:
            request.finished_future.result()

    def _s5cmd(self, *args: str) -> None:
        assert self.s5cmd is not None
        subprocess.run([self.s5cmd, "--endpoint-url", self.endpoint, *args], check=True, capture_output=True)

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

        def raw_loka(remote: S3Uri, _local: Path) -> None:
            self.store.upload_files([(folder / n, remote.join(n)) for n in names], verify=False)

        def crt(remote: S3Uri, _local: Path) -> None:
            self._crt_all([("PUT", remote.join(n).key, str(folder / n)) for n in names])

        def s5cmd(remote: S3Uri, _local: Path) -> None:
            self._s5cmd("cp", f"{folder}/*", f"s3://{BUCKET}/{remote.key}/")

        return self._present({"plain loop": plain, "boto3 default": default, "aws crt": crt, "s5cmd": s5cmd,
                              "loka": loka, "raw s3transfer": ceiling, "raw loka": raw_loka})  # fmt: skip

    def _present(self, methods: dict[str, Transfer]) -> dict[str, Transfer]:
        return {label: method for label, method in methods.items() if label not in self.missing}

    def restores(self, source: CheckpointStore) -> dict[str, Transfer]:
        stored, names = source.step_uri(STEP), self.names
        sizes = [(self.folder / n).stat().st_size for n in names]

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

        def raw_loka(_remote: S3Uri, local: Path) -> None:
            self.store.download_files([(stored.join(n), local / n) for n in names], sizes=sizes, verify=False)

        def crt(_remote: S3Uri, local: Path) -> None:
            self._folders(local)
            self._crt_all([("GET", stored.join(n).key, str(local / n)) for n in names])

        def s5cmd(_remote: S3Uri, local: Path) -> None:
            local.mkdir(parents=True, exist_ok=True)
            self._s5cmd("cp", f"s3://{BUCKET}/{stored.key}/*", f"{local}/")

        return self._present({"plain loop": plain, "boto3 default": default, "aws crt": crt, "s5cmd": s5cmd,
                              "loka": loka, "raw s3transfer": ceiling, "raw loka": raw_loka})  # fmt: skip


def crt_client(endpoint: str) -> tuple[Any, str] | None:
    """The AWS CRT S3 client for ``endpoint`` (its Host), or None when awscrt is not installed."""
    try:
        from awscrt.auth import AwsCredentialsProvider  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from awscrt.io import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            ClientBootstrap,
            DefaultHostResolver,
            EventLoopGroup,
        )
        from awscrt.s3 import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            S3Client,
            S3RequestTlsMode,
            create_default_s3_signing_config,
        )
    except ImportError:
        return None
    url = urllib.parse.urlsplit(endpoint)
    loop = EventLoopGroup()
    credentials = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    client = S3Client(
        bootstrap=ClientBootstrap(loop, DefaultHostResolver(loop)),
        region="us-east-1",
        signing_config=create_default_s3_signing_config(region="us-east-1", credential_provider=credentials),
        tls_mode=S3RequestTlsMode.DISABLED if url.scheme == "http" else S3RequestTlsMode.ENABLED,
        part_size=16 * 1024 * 1024,
        throughput_target_gbps=100.0,
    )
    return client, url.netloc


def s5cmd_binary() -> str | None:
    """s5cmd as `python -m localcluster.build s5cmd` built it into the cache (or on PATH), else None."""
    try:
        from localcluster.versions import cache_root
    except ImportError:  # a copy of bench/ without localcluster/ (the GPU machine): s5cmd on PATH
        return shutil.which("s5cmd")
    built = sorted((cache_root() / "bin").glob("s5cmd-*/s5cmd"))
    return str(built[-1]) if built else shutil.which("s5cmd")


def parse_size(text: str) -> float:
    """``10GB``, ``2G``, ``500MB``, ``1.5e9``: bytes (decimal units, as disks and MB/s count)."""
    units = {"TB": 1e12, "T": 1e12, "GB": 1e9, "G": 1e9, "MB": 1e6, "M": 1e6, "KB": 1e3, "K": 1e3, "B": 1.0}
    cleaned = text.strip().upper()
    for unit, factor in units.items():
        if cleaned.endswith(unit) and cleaned[: -len(unit)].strip():
            return float(cleaned[: -len(unit)]) * factor
    return float(cleaned)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=2e9, help="checkpoint size: 2GB (default), 10GB, 500MB")
    parser.add_argument("--files", type=int, default=None, help="files (large: 32, a model and an optimizer shard "
                        "per rank; small: one per 4 MB)")  # fmt: skip
    parser.add_argument("--layout", choices=("large", "small"), default="large", help="few large or many small files")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the median is reported (3)")
    parser.add_argument("--endpoint", default=None, help="an S3 endpoint instead of the local control plane's MinIO")
    parser.add_argument("--minio-pid", type=int, default=None, help="with --endpoint: the server's pid, for CPU")
    parser.add_argument("--workdir", type=Path, default=None, help="local folder for the files (default: /tmp)")
    args = parser.parse_args(argv)

    minio_pid = args.minio_pid
    if args.endpoint is None:
        from localcluster.controlplane import LocalCluster

        cluster = LocalCluster(echo=lambda _line: None)
        if not cluster.is_up():
            print("the local control plane is not up: run `make cluster-up` first", file=sys.stderr)
            return 1
        os.environ.update(cluster.env)
        endpoint = cluster.s3_endpoint
        pidfile = cluster.layout.pids / "minio.pid"
        minio_pid = int(pidfile.read_text()) if pidfile.exists() else None
    else:
        endpoint = os.environ["AWS_ENDPOINT_URL"] = args.endpoint
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    base = S3Uri(BUCKET, f"bench/checkpoint-{uuid.uuid4().hex[:8]}")
    store = ObjectStore()
    if args.endpoint is not None and BUCKET not in {b["Name"] for b in store.client.list_buckets()["Buckets"]}:
        store.client.create_bucket(Bucket=BUCKET)
    workdir = Path(tempfile.mkdtemp(prefix="loka-bench-", dir=args.workdir))
    try:
        total = int(args.size)
        if args.layout == "large":
            folder = write_checkpoint(workdir, total, world_size=max((args.files or 32) // 2, 1))
        else:
            file_bytes = total // args.files if args.files else 4_000_000
            folder = write_small_files(workdir, total, file_bytes=max(file_bytes, 16))
        methods = Methods(store, folder, endpoint)
        nbytes = sum(p.stat().st_size for p in files_of(folder))
        print(f"checkpoint: {len(methods.names)} files ({args.layout}), {nbytes / MB:.0f} MB; S3 at {endpoint}")
        usable = len(os.sched_getaffinity(0))
        print(f"cores: {os.cpu_count()} (usable by this process: {usable}); Loka's concurrency: {store.concurrency}")
        if methods.missing:
            print(f"left out (client not installed): {', '.join(methods.missing)}")
        print(f"load average at start: {load()}")

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
