"""The one S3 client wrapper of the trainer: URIs, parallel transfers, small objects, listing and deletion.

Credentials and endpoint come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), which the operator injects by ``secretKeyRef``; nothing here logs them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import ClientError

from loka_api.contract import ENV_AWS_ENDPOINT

MiB = 1024 * 1024

# Checkpoint shards are many mid-sized files: parallelism across files matters more than within one.
DEFAULT_CONCURRENCY = 32
DEFAULT_CHUNK_BYTES = 64 * MiB


class TransferCancelledError(RuntimeError):
    """A transfer was abandoned on request (SIGTERM); whatever it wrote is incomplete."""


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
                s3={"addressing_style": "path"},
                # The manifest's sha256 already covers every byte; a second CRC per part only costs CPU.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(
            max_concurrency=self.concurrency,
            multipart_threshold=self.chunk_bytes,
            multipart_chunksize=self.chunk_bytes,
            use_threads=True,
        )

    def _run_transfers(self, submit: Iterable[Any], cancel: threading.Event | None) -> None:
        """Wait for transfer futures; on ``cancel`` abandon the rest and raise TransferCancelledError."""
        # Leaving the `with` block by an exception cancels in-flight transfers (shutdown(cancel=True) is broken
        # in s3transfer 0.19: it passes its arguments in the wrong order).
        with create_transfer_manager(self.client, self.transfer_config()) as manager:
            futures: list[Any] = []
            for make in submit:
                if cancel is not None and cancel.is_set():
                    raise TransferCancelledError("transfer cancelled before all files were submitted")
                futures.append(make(manager))
            # s3transfer futures have no result(timeout): poll done() so a cancel is noticed within 0.1 s.
            while cancel is not None and not all(f.done() for f in futures):
                if cancel.wait(0.1):
                    raise TransferCancelledError("transfer cancelled while files were in flight")
            for future in futures:
                future.result()

    def upload_files(self, files: Iterable[tuple[Path, S3Uri]], *, cancel: threading.Event | None = None) -> None:
        """Upload every (local file, destination) pair in parallel; raise on the first failure."""

        def submitter(path: Path, dest: S3Uri) -> Any:
            return lambda manager: manager.upload(str(path), dest.bucket, dest.key)

        self._run_transfers((submitter(p, d) for p, d in files), cancel)

    def download_files(self, files: Iterable[tuple[S3Uri, Path]], *, cancel: threading.Event | None = None) -> None:
        """Download every (source, local file) pair in parallel, creating parent folders."""

        def submitter(src: S3Uri, path: Path) -> Any:
            path.parent.mkdir(parents=True, exist_ok=True)
            return lambda manager: manager.download(src.bucket, src.key, str(path))

        self._run_transfers((submitter(s, p) for s, p in files), cancel)

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
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def get_bytes(self, uri: S3Uri) -> bytes | None:
        """The object's content, or None when it does not exist."""
        try:
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    def put_bytes(self, uri: S3Uri, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data, ContentType=content_type)

    def delete(self, uri: S3Uri) -> None:
        self.client.delete_object(Bucket=uri.bucket, Key=uri.key)

    def delete_prefix(self, prefix: S3Uri) -> int:
        """Delete everything under ``prefix``; returns how many objects went."""
        keys = [obj.uri.key for obj in self.list_objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)
