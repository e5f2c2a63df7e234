"""The one S3 client wrapper: URIs, parallel transfers, small objects, listing and deletion.

The trainer stages, uploads and restores through it; the client library lists and downloads checkpoints through
it; the checkpoint reader (``loka_api.checkpoints``) is handed one. It needs boto3, which the trainer, cli and
operator extras install; the operator uses it for one read only (a source run's marker, ``loka_operator.lineage``).

Credentials and endpoint come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), which the operator injects by ``secretKeyRef``, or from ``settings`` (a researcher's
``.env``); nothing here logs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import ClientError

from loka_api.contract import ENV_AWS_ENDPOINT, ENV_AWS_KEY_ID, ENV_AWS_SECRET, ENV_AWS_SESSION_TOKEN
from loka_api.manifest import sha256_file

MiB = 1024 * 1024

# Checkpoint shards are many mid-sized files: parallelism across files matters more than within one. Parts of a
# hashed upload are held in memory until sent, so the part size times the concurrency bounds that memory (512 MiB).
DEFAULT_CONCURRENCY = 32
DEFAULT_CHUNK_BYTES = 16 * MiB
# How often a running download looks for files that have landed (to hash) and for a cancel.
_POLL_S = 0.05
# Files verified at once while a download goes on (sha256 releases the GIL: these run on other cores).
_HASHERS = 4
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


class ObjectStore:
    """S3 operations used by staging, checkpoints and the benchmark, over one boto3 client."""

    def __init__(
        self,
        client: Any | None = None,
        *,
        endpoint_url: str | None = None,
        settings: Mapping[str, str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        """``settings``: the AWS variables to use (a ``.env`` file's, say) instead of this process's environment;
        ``endpoint_url`` wins over either's ``AWS_ENDPOINT_URL``.
        """
        self.concurrency = concurrency
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
        self, files: Iterable[tuple[S3Uri, Path]], *, cancel: threading.Event | None = None
    ) -> list[TransferredFile]:
        """Download every (source, local file) pair, all files and the parts of each in parallel, creating parent
        folders. Each file's sha256 is computed as soon as it has landed, while the others are still arriving (read
        back from the page cache), so verifying a restore costs little time after the last byte. Raises
        ObjectMissingError for a source that does not exist.
        """
        pairs = list(files)
        digests: dict[int, Future[str]] = {}
        # Leaving the `with` blocks by an exception cancels in-flight transfers (shutdown(cancel=True) is broken
        # in s3transfer 0.19: it passes its arguments in the wrong order).
        with (
            ThreadPoolExecutor(max_workers=_HASHERS, thread_name_prefix="sha256") as hashers,
            create_transfer_manager(self.client, self.transfer_config()) as manager,
        ):
            pending: dict[int, Any] = {}
            for index, (source, path) in enumerate(pairs):
                _raise_if_cancelled(cancel, "before all files were requested")
                path.parent.mkdir(parents=True, exist_ok=True)
                pending[index] = manager.download(source.bucket, source.key, str(path))
            # s3transfer futures have no result(timeout): poll, so a cancel is noticed and each file is hashed soon
            # after it lands.
            while pending:
                _raise_if_cancelled(cancel, "while files were in flight")
                for index in [i for i, future in pending.items() if future.done()]:
                    source, path = pairs[index]
                    try:
                        pending.pop(index).result()
                    except ClientError as error:
                        if _error_code(error) in _MISSING:
                            raise ObjectMissingError(f"{source} does not exist") from error
                        raise
                    digests[index] = hashers.submit(sha256_file, path)
                if pending:
                    time.sleep(_POLL_S)
            return [
                TransferredFile(path, source, path.stat().st_size, digests[index].result())
                for index, (source, path) in enumerate(pairs)
            ]

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
