"""The one S3 client wrapper: URIs, parallel transfers, small objects, listing and deletion.

The trainer stages, uploads and restores through it; the client library lists and downloads checkpoints through
it; the checkpoint reader (``loka_api.checkpoints``) is handed one. It needs boto3, which the trainer, cli and
operator extras install; the operator uses it for one read only (a source run's marker, ``loka_operator.lineage``).

Credentials and endpoint come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), which the operator injects by ``secretKeyRef``, or from ``settings`` (a researcher's
``.env``); nothing here logs them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from awscrt import checksums
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from loka_api.contract import ENV_AWS_ENDPOINT, ENV_AWS_KEY_ID, ENV_AWS_SECRET, ENV_AWS_SESSION_TOKEN

MiB = 1024 * 1024

# Parts of 16 MiB; each part in flight holds one buffer, so the part size times the concurrency bounds the memory a
# transfer takes (32 parts: 512 MiB; at most 64: 1 GiB).
DEFAULT_CHUNK_BYTES = 16 * MiB
_MIN_CONCURRENCY, _MAX_CONCURRENCY, _PER_CORE = 32, 64, 8
# How often a running transfer looks for a cancel or a failure.
_POLL_S = 0.1
# The checksum S3 and MinIO verify on receipt (x-amz-checksum-crc64nvme), that multipart uploads combine into one
# for the whole object (ChecksumType FULL_OBJECT), and that the manifest records: computed by awscrt's native code.
CHECKSUM_ALGORITHM = "CRC64NVME"
# S3 takes at most 10 000 parts per object: larger files get larger parts.
_MAX_PARTS = 10_000
# How long a small request (a marker, a manifest, a listing) may hang before it is retried.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# 412: the precondition failed; 409: a concurrent conditional write won (S3); 404: If-Match on a deleted object.
_CONDITION_FAILED = frozenset({"412", "PreconditionFailed", "409", "ConditionalRequestConflict", *_MISSING})
_NOT_IMPLEMENTED = frozenset({"501", "NotImplemented"})


class TransferCancelledError(RuntimeError):
    """A transfer was abandoned on request (SIGTERM); whatever it wrote is incomplete."""


class ObjectMissingError(FileNotFoundError):
    """An object that was expected (listed in a manifest, named by the user) is not in the bucket."""


class PreconditionFailedError(RuntimeError):
    """A conditional write was refused: the object changed (or appeared, or went) since it was read."""


# Stores known to honour both conditional writes on PutObject (If-None-Match: *, If-Match: <etag>).
STORES_WITH_CONDITIONAL_WRITES = "AWS S3, MinIO (2024 releases or later), Cloudflare R2"


class ConditionalWritesUnsupportedError(ValueError):
    """The store ignores or refuses conditional writes, which fence the attempts of a run from each other."""

    def __init__(self, endpoint: str, lacking: str) -> None:
        super().__init__(
            f"the S3 store at {endpoint} {lacking}: Loka keeps two attempts of a run from writing the same "
            f"checkpoints with conditional writes (PutObject with If-None-Match and If-Match), so it cannot keep "
            f"checkpoints there safely. Use a store that honours both ({STORES_WITH_CONDITIONAL_WRITES}) in "
            f"spec.storage.endpoint"
        )
        self.endpoint = endpoint
        self.lacking = lacking


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def default_concurrency(cores: int | None = None) -> int:
    """Requests in flight: a core drives about 8 (each is mostly waiting on the network), between 32 and 64."""
    usable = cores or len(os.sched_getaffinity(0))
    return max(_MIN_CONCURRENCY, min(_PER_CORE * usable, _MAX_CONCURRENCY))


def crc64nvme(data: Any, previous: int = 0) -> int:
    """CRC64NVME of ``data`` (any buffer), continuing ``previous``: awscrt's native code (CLMUL), several GB/s."""
    return int(checksums.crc64nvme(data, previous))


def combine_crc64nvme(first: int, second: int, second_length: int) -> int:
    """The CRC of two runs of bytes from each one's CRC (how parts combine into the whole object's)."""
    return int(checksums.combine_crc64nvme(first, second, second_length))


def checksum_header(crc: int) -> str:
    """A CRC64NVME as S3 writes it in x-amz-checksum-crc64nvme: base64 of its 8 bytes, big-endian."""
    return base64.b64encode(crc.to_bytes(8, "big")).decode()


def file_crc64nvme(path: Path, block: int = 8 * MiB) -> str:
    """A local file's CRC64NVME, as ``checksum_header`` writes it."""
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            crc = crc64nvme(chunk, crc)
    return checksum_header(crc)


def _raise_if_cancelled(cancel: threading.Event | None, when: str) -> None:
    if cancel is not None and cancel.is_set():
        raise TransferCancelledError(f"transfer cancelled {when}")


def _read_into(handle: Any, view: memoryview) -> int:
    """Fill ``view`` from ``handle``; fewer bytes only at the end of the file."""
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _raise_first_failure(futures: Iterable[Future[Any]]) -> None:
    for future in futures:
        if future.done() and future.exception() is not None:
            future.result()


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``; ``key`` never starts with a slash and may be empty (the bucket root)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            msg = f"expected an s3:// URI (s3://bucket/prefix), got {uri!r}"
            raise ValueError(msg)
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket:
            msg = f"expected an s3:// URI with a bucket (s3://bucket/prefix), got {uri!r}"
            raise ValueError(msg)
        return cls(bucket, key.lstrip("/"))

    def join(self, *parts: str) -> S3Uri:
        pieces = [p.strip("/") for p in (self.key, *parts) if p.strip("/")]
        return S3Uri(self.bucket, "/".join(pieces))

    def as_prefix(self) -> str:
        """The key with a trailing slash, so listing ``a/step_1`` never matches ``a/step_10``."""
        return f"{self.key.rstrip('/')}/" if self.key else ""

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class StoredObject:
    uri: S3Uri
    size: int


@dataclass(frozen=True)
class TransferredFile:
    """A file sent or received in one pass: its size and the CRC64NVME (``checksum_header``'s form) of exactly the
    bytes that went over the wire, computed as they went; S3 verified the same checksum on receipt of an upload."""

    path: Path
    uri: S3Uri
    size: int
    crc64nvme: str


@dataclass(frozen=True)
class VersionedBytes:
    """A small object's content and its ETag, the version a conditional write names."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class _Part:
    """One part of a multipart upload, and the pooled buffer it was read into (given back once it is sent)."""

    dest: S3Uri
    upload_id: str
    number: int
    body: bytes | bytearray
    buffer: bytearray
    crc: int


class _PartBuffers:
    """At most ``count`` part buffers, reused: reading each part into a fresh 16 MiB object costs the kernel as
    much (page faults, zeroed pages) as checksumming it does.
    """

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    def take(self, timeout: float) -> bytearray | None:
        """A free buffer, a new one while fewer than ``count`` exist, else one given back within ``timeout``."""
        with self._lock:
            if self._free.empty() and self._made < self.count:
                self._made += 1
                return bytearray(self.size)
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def give(self, buffer: bytearray) -> None:
        self._free.put(buffer)


@dataclass
class _Download:
    """One file being received in ranges: its descriptor, and each range's CRC as it lands (combined at the end)."""

    source: S3Uri
    path: Path
    size: int
    fd: int = -1
    crcs: dict[int, tuple[int, int]] | None = None  # range start -> (CRC, length)

    @property
    def received(self) -> int:
        return sum(length for _, length in (self.crcs or {}).values())

    def crc64nvme(self) -> str:
        crc = 0
        for start in sorted(self.crcs or {}):
            part, length = (self.crcs or {})[start]
            crc = combine_crc64nvme(crc, part, length) if start else part
        return checksum_header(crc)


class ObjectStore:
    """S3 operations used by staging, checkpoints and the benchmark, over one boto3 client."""

    def __init__(
        self,
        client: Any | None = None,
        *,
        endpoint_url: str | None = None,
        settings: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        """``settings``: the AWS variables to use (a ``.env`` file's, say) instead of this process's environment;
        ``endpoint_url`` wins over either's ``AWS_ENDPOINT_URL``. ``concurrency``: requests in flight (default:
        by the cores this process may use, ``default_concurrency``).
        """
        self.concurrency = concurrency or default_concurrency()
        self.chunk_bytes = chunk_bytes
        source = os.environ if settings is None else settings
        endpoint = endpoint_url or source.get(ENV_AWS_ENDPOINT) or None
        credentials: dict[str, Any] = {}
        if settings is not None:  # else boto3's own chain: the environment, then its config files and roles
            credentials = {
                "aws_access_key_id": settings.get(ENV_AWS_KEY_ID) or None,
                "aws_secret_access_key": settings.get(ENV_AWS_SECRET) or None,
                "aws_session_token": settings.get(ENV_AWS_SESSION_TOKEN) or None,
                "region_name": settings.get("AWS_DEFAULT_REGION") or settings.get("AWS_REGION") or "us-east-1",
            }
        self.client: Any = client or boto3.client(
            "s3",
            endpoint_url=endpoint,
            **credentials,
            # The pool must be as wide as the transfer concurrency or threads queue for connections.
            config=Config(
                max_pool_connections=self.concurrency + 4,
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                # Integrity is the CRC64NVME Loka computes once per part (native code) and S3 verifies on receipt;
                # a SigV4 payload hash (botocore computes one per request over plain http) or a checksum botocore
                # adds on its own would only read every byte again.
                s3={"addressing_style": "path", "payload_signing_enabled": False},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def transfer_config(self) -> TransferConfig:
        """These parts and this concurrency for s3transfer (the benchmark's ceiling moves the same bytes with it)."""
        return TransferConfig(
            max_concurrency=self.concurrency,
            multipart_threshold=self.chunk_bytes,
            multipart_chunksize=self.chunk_bytes,
            use_threads=True,
        )

    def upload_files(
        self, files: Iterable[tuple[Path, S3Uri]], *, cancel: threading.Event | None = None, verify: bool = True
    ) -> list[TransferredFile]:
        """Upload every (local file, destination) pair, all files and the parts of each in parallel; raise on
        the first failure (an unfinished multipart upload is aborted).

        Each file is read once, front to back, into pooled part buffers that go out as parallel part uploads. Each
        part's CRC64NVME is computed from the very bytes that are sent and sent with them; S3 (or MinIO) verifies
        it on receipt, and the parts' CRCs combine into the whole file's, which S3 verifies again when the upload
        completes and the manifest records. ``verify=False`` sends no checksum (the benchmark's raw ceiling).
        """
        pairs = list(files)
        # Parts read but not sent yet: bounded, so memory stays within concurrency x part size.
        buffers = _PartBuffers(self.concurrency, self.chunk_bytes)
        halt = threading.Event()  # set when one file failed or the caller cancelled: the other readers stop too
        with (
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-put") as senders,
            # One reader per file in flight: it reads (and checksums) front to back and hands its parts to the
            # senders; a small file it sends itself.
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-read") as readers,
        ):
            futures = [
                readers.submit(self._upload_one, path, dest, senders, buffers, halt, verify) for path, dest in pairs
            ]
            pending = set(futures)
            try:
                while pending:
                    _raise_if_cancelled(cancel, "while files were in flight")
                    done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()
            except BaseException:
                halt.set()
                readers.shutdown(wait=True, cancel_futures=True)
                raise
        return [future.result() for future in futures]

    def _upload_one(  # noqa: PLR0917 - one file's upload, handed its share of the pools
        self,
        path: Path,
        dest: S3Uri,
        senders: ThreadPoolExecutor,
        buffers: _PartBuffers,
        halt: threading.Event,
        verify: bool,
    ) -> TransferredFile:
        size = path.stat().st_size
        checked: dict[str, Any] = {"ChecksumAlgorithm": CHECKSUM_ALGORITHM} if verify else {}
        with path.open("rb") as handle:
            if size <= self.chunk_bytes:
                data = handle.read()
                crc = crc64nvme(data) if verify else 0
                sum_arg = {"ChecksumCRC64NVME": checksum_header(crc)} if verify else {}
                self.client.put_object(Bucket=dest.bucket, Key=dest.key, Body=data, **sum_arg)
                return TransferredFile(path, dest, len(data), checksum_header(crc))
            part_bytes = max(self.chunk_bytes, -(-size // _MAX_PARTS))
            full = {"ChecksumType": "FULL_OBJECT"} if verify else {}
            upload_id = self.client.create_multipart_upload(Bucket=dest.bucket, Key=dest.key, **checked, **full)[
                "UploadId"
            ]
            parts: list[Future[dict[str, Any]]] = []
            sent, crc = 0, 0
            try:
                while True:
                    buffer = None
                    while buffer is None:
                        _raise_if_cancelled(halt, f"while {path.name} was read")
                        _raise_first_failure(parts)
                        buffer = buffers.take(timeout=_POLL_S)
                    if len(buffer) < part_bytes:  # a file of more than 10 000 parts of the usual size
                        buffer = bytearray(part_bytes)
                    length = _read_into(handle, memoryview(buffer)[:part_bytes])
                    if length == 0:
                        buffers.give(buffer)
                        break
                    body = buffer if length == len(buffer) else bytes(buffer[:length])  # botocore takes no views
                    part_crc = crc64nvme(memoryview(buffer)[:length]) if verify else 0
                    crc = combine_crc64nvme(crc, part_crc, length) if sent else part_crc
                    sent += length
                    piece = _Part(dest, upload_id, len(parts) + 1, body, buffer, part_crc)
                    parts.append(senders.submit(self._send_part, piece, buffers, verify))
                self.client.complete_multipart_upload(
                    Bucket=dest.bucket,
                    Key=dest.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [part.result() for part in parts]},
                    **({"ChecksumCRC64NVME": checksum_header(crc), **full} if verify else {}),
                )
            except BaseException:
                for part in parts:
                    part.cancel()
                with contextlib.suppress(ClientError):  # best effort: S3 lifecycle rules clean up what stays
                    self.client.abort_multipart_upload(Bucket=dest.bucket, Key=dest.key, UploadId=upload_id)
                raise
        return TransferredFile(path, dest, sent, checksum_header(crc))

    def _send_part(self, part: _Part, buffers: _PartBuffers, verify: bool) -> dict[str, Any]:
        checked = {"ChecksumCRC64NVME": checksum_header(part.crc)} if verify else {}
        try:
            response = self.client.upload_part(
                Bucket=part.dest.bucket,
                Key=part.dest.key,
                UploadId=part.upload_id,
                PartNumber=part.number,
                Body=part.body,
                **checked,
            )
        finally:
            buffers.give(part.buffer)
        return {"PartNumber": part.number, "ETag": str(response["ETag"]), **checked}

    def download_files(
        self,
        files: Iterable[tuple[S3Uri, Path]],
        *,
        sizes: Iterable[int] | None = None,
        cancel: threading.Event | None = None,
        verify: bool = True,
    ) -> list[TransferredFile]:
        """Download every (source, local file) pair, all files and the ranges of each in parallel, creating parent
        folders. Each range is read into a pooled buffer, checksummed there (CRC64NVME, native code) and written at
        its offset: the file's CRC comes from the very bytes received, with no second pass over the file.
        ``sizes``: the objects' sizes when known (a manifest's), else each is asked for first. Raises
        ObjectMissingError for a source that does not exist. ``verify=False`` computes no CRC (the raw ceiling).
        """
        pairs = list(files)
        known = list(sizes) if sizes is not None else None
        buffers = _PartBuffers(self.concurrency, self.chunk_bytes)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-get") as getters:
            if known is None:
                heads = [getters.submit(self._size_of, source) for source, _ in pairs]
                known = [future.result() for future in heads]
            downloads = [_Download(source, path, size) for (source, path), size in zip(pairs, known, strict=True)]
            futures: list[Future[None]] = []
            try:
                for download in downloads:
                    _raise_if_cancelled(cancel, "before all files were requested")
                    futures += self._start_download(download, getters, buffers, verify)
                pending = set(futures)
                while pending:
                    _raise_if_cancelled(cancel, "while files were in flight")
                    done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                wait(futures)
                for download in downloads:
                    if download.fd >= 0:
                        os.close(download.fd)
        return [TransferredFile(d.path, d.source, d.received, d.crc64nvme() if verify else "") for d in downloads]

    def _size_of(self, source: S3Uri) -> int:
        try:
            return int(self.client.head_object(Bucket=source.bucket, Key=source.key)["ContentLength"])
        except ClientError as error:
            if _error_code(error) in _MISSING:
                raise ObjectMissingError(f"{source} does not exist") from error
            raise

    def _start_download(
        self, download: _Download, getters: ThreadPoolExecutor, buffers: _PartBuffers, verify: bool
    ) -> list[Future[None]]:
        download.path.parent.mkdir(parents=True, exist_ok=True)
        download.fd = os.open(download.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(download.fd, download.size)
        starts = list(range(0, download.size, self.chunk_bytes)) or [0]
        download.crcs = {}
        return [getters.submit(self._get_range, download, start, buffers, verify) for start in starts]

    def _get_range(self, download: _Download, start: int, buffers: _PartBuffers, verify: bool) -> None:
        length = min(self.chunk_bytes, download.size - start)
        source = download.source
        ranged = {"Range": f"bytes={start}-{start + length - 1}"} if length else {}  # an empty object: no range
        try:
            body = self.client.get_object(Bucket=source.bucket, Key=source.key, **ranged)["Body"]
        except ClientError as error:
            if _error_code(error) in _MISSING:
                raise ObjectMissingError(f"{source} does not exist") from error
            raise
        buffer = None
        while buffer is None:
            buffer = buffers.take(timeout=_POLL_S)
        try:
            view = memoryview(buffer)[:length]
            got = _read_into(body, view)
            # An object that changed size since it was listed: the received size says so (a manifest mismatch).
            longer = len(body.read(1)) if got == length else 0
            crc = crc64nvme(view[:got]) if verify else 0
            written = 0
            while written < got:
                written += os.pwrite(download.fd, view[written:got], start + written)
            if download.crcs is not None:
                download.crcs[start] = (crc, got + longer)
        finally:
            body.close()
            buffers.give(buffer)

    def download_prefix(self, prefix: S3Uri, dest: Path, *, cancel: threading.Event | None = None) -> list[Path]:
        """Mirror every object under ``prefix`` into ``dest``; returns the local files."""
        found = list(self.list_objects(prefix))
        pairs = [(obj.uri, dest / obj.uri.key.removeprefix(prefix.as_prefix())) for obj in found]
        if not pairs:
            msg = f"nothing found under {prefix}"
            raise FileNotFoundError(msg)
        self.download_files(pairs, sizes=[obj.size for obj in found], cancel=cancel)
        return [p for _, p in pairs]

    def list_objects(self, prefix: S3Uri) -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.as_prefix()):
            for item in page.get("Contents", []):
                yield StoredObject(S3Uri(prefix.bucket, item["Key"]), int(item["Size"]))

    def list_folders(self, prefix: S3Uri) -> list[str]:
        """Names of the immediate "folders" under ``prefix``."""
        paginator = self.client.get_paginator("list_objects_v2")
        names: list[str] = []
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.as_prefix(), Delimiter="/"):
            names.extend(
                p["Prefix"].removeprefix(prefix.as_prefix()).rstrip("/") for p in page.get("CommonPrefixes", [])
            )
        return names

    def exists(self, uri: S3Uri) -> bool:
        try:
            self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as error:
            if _error_code(error) in _MISSING:
                return False
            raise
        return True

    def get_bytes(self, uri: S3Uri) -> bytes | None:
        """The object's content, or None when it does not exist."""
        versioned = self.get_versioned(uri)
        return None if versioned is None else versioned.data

    def get_versioned(self, uri: S3Uri) -> VersionedBytes | None:
        """The object's content with its ETag (for a conditional write), or None when it does not exist."""
        try:
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as error:
            if _error_code(error) in _MISSING:
                return None
            raise
        body: bytes = response["Body"].read()
        return VersionedBytes(body, str(response["ETag"]))

    def put_bytes(
        self,
        uri: S3Uri,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """Store ``data``; returns the new ETag. ``if_match``: only over that version of the object; ``if_absent``:
        only when there is none. A refused condition raises PreconditionFailedError (S3 and MinIO check it
        atomically, so of two writers racing on the same version exactly one wins).
        """
        conditions: dict[str, str] = {}
        if if_match is not None:
            conditions["IfMatch"] = if_match
        if if_absent:
            conditions["IfNoneMatch"] = "*"
        try:
            response = self.client.put_object(
                Bucket=uri.bucket, Key=uri.key, Body=data, ContentType=content_type, **conditions
            )
        except ClientError as error:
            if conditions and _error_code(error) in _CONDITION_FAILED:
                raise PreconditionFailedError(f"{uri} changed since it was read ({_error_code(error)})") from error
            if conditions and _error_code(error) in _NOT_IMPLEMENTED:
                header = " and ".join(("If-Match" if c == "IfMatch" else "If-None-Match") for c in conditions)
                lacking = f"answers 501 Not Implemented to a PutObject with {header}"
                raise ConditionalWritesUnsupportedError(self.endpoint, lacking) from error
            raise
        return str(response.get("ETag", ""))

    @property
    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "(the default AWS endpoint)")

    def check_conditional_writes(self, prefix: S3Uri) -> None:
        """Probe once whether the store honours If-None-Match and If-Match on PutObject, with a scratch object
        under ``prefix``; raise ConditionalWritesUnsupportedError naming what it lacks.
        """
        probe = prefix.join(f".loka-conditional-write-probe-{os.urandom(6).hex()}")
        try:
            self.put_bytes(probe, b"1", if_absent=True)
            try:
                self.put_bytes(probe, b"2", if_absent=True)
            except PreconditionFailedError:
                pass
            else:
                lacking = "ignores If-None-Match on PutObject (it overwrote an object that existed)"
                raise ConditionalWritesUnsupportedError(self.endpoint, lacking)
            try:
                self.put_bytes(probe, b"3", if_match='"00000000000000000000000000000000"')
            except PreconditionFailedError:
                pass
            else:
                lacking = "ignores If-Match on PutObject (it overwrote an object whose ETag did not match)"
                raise ConditionalWritesUnsupportedError(self.endpoint, lacking)
        finally:
            with contextlib.suppress(ClientError):
                self.delete(probe)

    def delete(self, uri: S3Uri) -> None:
        self.client.delete_object(Bucket=uri.bucket, Key=uri.key)

    def delete_prefix(self, prefix: S3Uri) -> int:
        """Delete everything under ``prefix``; returns how many objects went."""
        keys = [obj.uri.key for obj in self.list_objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)
