"""The one S3 client wrapper of the trainer: URIs, parallel transfers, small objects, listing and deletion.

Credentials and endpoint come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), which the operator injects by ``secretKeyRef``; nothing here logs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from loka_api.contract import ENV_AWS_ENDPOINT

MiB = 1024 * 1024

# Checkpoint shards are many mid-sized files: parallelism across files matters more than within one. Parts of a
# hashed upload are held in memory until sent, so the part size times the concurrency bounds that memory (512 MiB).
DEFAULT_CONCURRENCY = 32
DEFAULT_CHUNK_BYTES = 16 * MiB
# S3 takes at most 10 000 parts per object: larger files get larger parts.
_MAX_PARTS = 10_000
# How long a small request (a marker, a manifest, a listing) may hang before it is retried.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# 412: the precondition failed; 409: a concurrent conditional write won (S3); 404: If-Match on a deleted object.
_CONDITION_FAILED = frozenset({"412", "PreconditionFailed", "409", "ConditionalRequestConflict", *_MISSING})


class TransferCancelledError(RuntimeError):
    """A transfer was abandoned on request (SIGTERM); whatever it wrote is incomplete."""


class ObjectMissingError(FileNotFoundError):
    """An object that was expected (listed in a manifest, named by the user) is not in the bucket."""


class ObjectSizeError(RuntimeError):
    """An object is not the size it was expected to be (a manifest's, or its own a moment earlier)."""

    def __init__(self, uri: S3Uri, expected: int, actual: int | None) -> None:
        self.uri, self.expected, self.actual = uri, expected, actual
        found = "another size" if actual is None else f"{actual} bytes"
        super().__init__(f"{uri} holds {found}, not {expected}")


class PreconditionFailedError(RuntimeError):
    """A conditional write was refused: the object changed (or appeared, or went) since it was read."""


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


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
    """A file sent or received in one pass: its size and the sha256 of exactly the bytes that went over the wire."""

    path: Path
    uri: S3Uri
    size: int
    sha256: str


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


class _PartBuffers:
    """At most ``count`` part buffers, reused: reading each part into a fresh 16 MiB object costs the kernel as
    much (page faults, zeroed pages) as hashing it does.
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


class _RangedDownload:
    """One object fetched as parallel ranged GETs into its local file (each part written at its offset), hashed
    in order as the parts arrive: whichever worker completes the next part in line hashes it and any parts
    already waiting behind it. Files hash in parallel with each other; nothing is read back from disk.
    """

    def __init__(self, source: S3Uri, path: Path, size: int, part_bytes: int, window: threading.Semaphore) -> None:
        self.source = source
        self.path = path
        self.size = size
        self.part_bytes = part_bytes
        self.parts = -(-size // part_bytes)
        self._window = window  # one permit per part held in memory until it is hashed
        self._digest = hashlib.sha256()
        self._next = 0
        self._waiting: dict[int, bytes] = {}
        self._hashing = False
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size)
        self._fd = os.open(path, os.O_WRONLY)

    def byte_range(self, index: int) -> str:
        start = index * self.part_bytes
        return f"bytes={start}-{min(self.size, start + self.part_bytes) - 1}"

    def expected(self, index: int) -> int:
        return min(self.size, (index + 1) * self.part_bytes) - index * self.part_bytes

    def received(self, index: int, data: bytes) -> None:
        os.pwrite(self._fd, data, index * self.part_bytes)
        with self._lock:
            self._waiting[index] = data
            if self._hashing:
                return  # the worker hashing this file takes this part too, in its turn
            self._hashing = True
        while True:
            with self._lock:
                part = self._waiting.pop(self._next, None)
                if part is None:
                    self._hashing = False
                    return
                self._next += 1
            self._digest.update(part)  # outside the lock: other parts of the file keep arriving meanwhile
            self._window.release()

    def close(self) -> None:
        os.close(self._fd)

    def result(self) -> TransferredFile:
        return TransferredFile(self.path, self.source, self.size, self._digest.hexdigest())


# Reading a part's body can fail after botocore's own retries are over (a reset connection, a short read).
_PART_TRIES = 3
_BODY_ERRORS = (IncompleteReadError, ReadTimeoutError, ResponseStreamingError, ConnectionClosedError)


class ObjectStore:
    """S3 operations used by staging, checkpoints and the benchmark, over one boto3 client."""

    def __init__(
        self,
        client: Any | None = None,
        *,
        endpoint_url: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.concurrency = concurrency
        self.chunk_bytes = chunk_bytes
        self.client: Any = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get(ENV_AWS_ENDPOINT) or None,
            # The pool must be as wide as the transfer concurrency or threads queue for connections.
            config=Config(
                max_pool_connections=concurrency + 4,
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                # The manifest's sha256 covers every byte end to end: a SigV4 payload hash (botocore computes one
                # per request over plain http) and a CRC per part would only read every byte again.
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
        self, files: Iterable[tuple[Path, S3Uri]], *, cancel: threading.Event | None = None
    ) -> list[TransferredFile]:
        """Upload every (local file, destination) pair, all files and the parts of each in parallel; raise on
        the first failure (an unfinished multipart upload is aborted).

        Each file is read once, front to back: its sha256 (for a checkpoint's manifest) is computed from the very
        bytes that are sent, which go out as parallel part uploads straight from that read.
        """
        pairs = list(files)
        # Parts read but not sent yet: bounded, so memory stays within concurrency x part size.
        buffers = _PartBuffers(self.concurrency, self.chunk_bytes)
        halt = threading.Event()  # set when one file failed or the caller cancelled: the other readers stop too
        with (
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-put") as senders,
            # One reader per file in flight: it reads (and hashes) front to back and hands its parts to the senders;
            # a small file it sends itself.
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-read") as readers,
        ):
            futures = [readers.submit(self._upload_one, path, dest, senders, buffers, halt) for path, dest in pairs]
            pending = set(futures)
            try:
                while pending:
                    _raise_if_cancelled(cancel, "while files were in flight")
                    done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()
            except BaseException:
                halt.set()
                readers.shutdown(wait=True, cancel_futures=True)
                raise
        return [future.result() for future in futures]

    def _upload_one(
        self,
        path: Path,
        dest: S3Uri,
        senders: ThreadPoolExecutor,
        buffers: _PartBuffers,
        halt: threading.Event,
    ) -> TransferredFile:
        digest = hashlib.sha256()
        size = path.stat().st_size
        with path.open("rb") as handle:
            if size <= self.chunk_bytes:
                data = handle.read()
                digest.update(data)
                self.client.put_object(Bucket=dest.bucket, Key=dest.key, Body=data)
                return TransferredFile(path, dest, len(data), digest.hexdigest())
            part_bytes = max(self.chunk_bytes, -(-size // _MAX_PARTS))
            upload_id = self.client.create_multipart_upload(Bucket=dest.bucket, Key=dest.key)["UploadId"]
            parts: list[Future[str]] = []
            sent = 0
            try:
                while True:
                    buffer = None
                    while buffer is None:
                        _raise_if_cancelled(halt, f"while {path.name} was read")
                        _raise_first_failure(parts)
                        buffer = buffers.take(timeout=0.1)
                    if len(buffer) < part_bytes:  # a file of more than 10 000 parts of the usual size
                        buffer = bytearray(part_bytes)
                    length = _read_into(handle, memoryview(buffer)[:part_bytes])
                    if length == 0:
                        buffers.give(buffer)
                        break
                    body = buffer if length == len(buffer) else bytes(buffer[:length])  # botocore takes no views
                    digest.update(memoryview(buffer)[:length])
                    sent += length
                    piece = _Part(dest, upload_id, len(parts) + 1, body, buffer)
                    parts.append(senders.submit(self._send_part, piece, buffers))
                etags = [part.result() for part in parts]
                self.client.complete_multipart_upload(
                    Bucket=dest.bucket,
                    Key=dest.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, start=1)]},
                )
            except BaseException:
                for part in parts:
                    part.cancel()
                with contextlib.suppress(ClientError):  # best effort: S3 lifecycle rules clean up what stays
                    self.client.abort_multipart_upload(Bucket=dest.bucket, Key=dest.key, UploadId=upload_id)
                raise
        return TransferredFile(path, dest, sent, digest.hexdigest())

    def _send_part(self, part: _Part, buffers: _PartBuffers) -> str:
        try:
            response = self.client.upload_part(
                Bucket=part.dest.bucket,
                Key=part.dest.key,
                UploadId=part.upload_id,
                PartNumber=part.number,
                Body=part.body,
            )
        finally:
            buffers.give(part.buffer)
        return str(response["ETag"])

    def download_files(
        self,
        files: Iterable[tuple[S3Uri, Path]],
        *,
        sizes: Sequence[int] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[TransferredFile]:
        """Download every (source, local file) pair, creating parent folders: all files and all parts of each
        in parallel (ranged GETs), each file's sha256 computed from the bytes as they arrive, with no second read.
        ``sizes`` (in the same order) spares a HEAD per file when they are known (a manifest lists them). Raises
        ObjectMissingError for a source that does not exist, ObjectSizeError for one of another size.
        """
        pairs = list(files)
        # Parts held in memory while an earlier part of their file is still on its way: bounded.
        window = threading.Semaphore(self.concurrency + 8)
        downloads: list[_RangedDownload] = []
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="s3-get") as pool:
            try:
                if sizes is None:
                    sizes = list(pool.map(self._size_of, [source for source, _ in pairs]))
                futures: list[Future[None]] = []
                for (source, path), size in zip(pairs, sizes, strict=True):
                    download = _RangedDownload(source, path, size, self.chunk_bytes, window)
                    downloads.append(download)
                    for index in range(download.parts):
                        while not window.acquire(timeout=0.1):
                            _raise_if_cancelled(cancel, "before all parts were requested")
                            _raise_first_failure(futures)  # a failed part never frees the parts behind it
                        futures.append(pool.submit(self._get_part, download, index))
                pending = set(futures)
                while pending:
                    _raise_if_cancelled(cancel, "while parts were in flight")
                    done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                for download in downloads:
                    download.close()
        return [download.result() for download in downloads]

    def _size_of(self, uri: S3Uri) -> int:
        try:
            response = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as error:
            if _error_code(error) in _MISSING:
                raise ObjectMissingError(f"{uri} does not exist") from error
            raise
        return int(response["ContentLength"])

    def _get_part(self, download: _RangedDownload, index: int) -> None:
        source = download.source
        for attempt in range(1, _PART_TRIES + 1):
            try:
                response = self.client.get_object(
                    Bucket=source.bucket, Key=source.key, Range=download.byte_range(index)
                )
                total = str(response.get("ContentRange", "")).rpartition("/")[2]
                if total.isdigit() and int(total) != download.size:
                    raise ObjectSizeError(source, download.size, int(total))
                data: bytes = response["Body"].read()
            except ClientError as error:
                code = _error_code(error)
                if code in _MISSING:
                    raise ObjectMissingError(f"{source} does not exist") from error
                if code in {"416", "InvalidRange"}:  # shorter than the range asked for
                    raise ObjectSizeError(source, download.size, None) from error
                raise
            except _BODY_ERRORS:
                if attempt == _PART_TRIES:
                    raise
                continue
            if len(data) == download.expected(index):
                download.received(index, data)
                return
        raise ObjectSizeError(source, download.size, None)  # every try came short

    def download_prefix(self, prefix: S3Uri, dest: Path, *, cancel: threading.Event | None = None) -> list[Path]:
        """Mirror every object under ``prefix`` into ``dest``; returns the local files."""
        pairs = [(obj.uri, dest / obj.uri.key.removeprefix(prefix.as_prefix())) for obj in self.list_objects(prefix)]
        if not pairs:
            msg = f"nothing found under {prefix}"
            raise FileNotFoundError(msg)
        self.download_files(pairs, cancel=cancel)
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
            raise
        return str(response.get("ETag", ""))

    def delete(self, uri: S3Uri) -> None:
        self.client.delete_object(Bucket=uri.bucket, Key=uri.key)

    def delete_prefix(self, prefix: S3Uri) -> int:
        """Delete everything under ``prefix``; returns how many objects went."""
        keys = [obj.uri.key for obj in self.list_objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)
