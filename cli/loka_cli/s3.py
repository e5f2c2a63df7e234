"""S3 from a researcher's machine: the credentials and endpoint of `.env` or the environment (the standard AWS
variables), path-style addressing for MinIO. Errors say which bucket and what to check, never a key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loka_api.contract import ENV_AWS_ENDPOINT, ENV_AWS_KEY_ID, ENV_AWS_SECRET, ENV_AWS_SESSION_TOKEN
from loka_cli.envfile import first
from loka_cli.errors import EXIT_CLUSTER, CliError, usage


@dataclass(frozen=True)
class S3Path:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, flag: str) -> S3Path:
        if not uri.startswith("s3://") or not uri.removeprefix("s3://").split("/", 1)[0]:
            raise usage(f"{flag}: {uri!r} is not an s3:// URI", "write it as s3://bucket/prefix/")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Path:
        return S3Path(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/")))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class S3:
    def __init__(self, env: Mapping[str, str], endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint or first(env, ENV_AWS_ENDPOINT)
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=first(env, ENV_AWS_KEY_ID),
            aws_secret_access_key=first(env, ENV_AWS_SECRET),
            aws_session_token=first(env, ENV_AWS_SESSION_TOKEN),
            region_name=first(env, "AWS_DEFAULT_REGION", "AWS_REGION") or "us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
        )

    def explain(self, error: Exception, what: str) -> CliError:
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.endpoint or "AWS S3"
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in .env (or the environment)"
            elif code in ("NoSuchBucket",):
                hint = "check the bucket name"
            else:
                hint = None
            return CliError(f"{what}: S3 at {where} answered {code}", hint=hint, code=EXIT_CLUSTER)
        if isinstance(error, BotoCoreError | OSError):
            return CliError(
                f"{what}: cannot reach S3 at {where} ({type(error).__name__})",
                hint="set AWS_ENDPOINT_URL (in .env) to an endpoint this machine reaches, or pass --endpoint",
                code=EXIT_CLUSTER,
            )
        return CliError(f"{what}: {error}", code=EXIT_CLUSTER)

    def upload(self, path: Path, dest: S3Path) -> None:
        self.client.upload_file(str(path), dest.bucket, dest.key)

    def delete(self, dest: S3Path) -> None:
        self.client.delete_object(Bucket=dest.bucket, Key=dest.key)

    def get(self, src: S3Path) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            body: bytes = self.client.get_object(Bucket=src.bucket, Key=src.key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return body

    def folders(self, prefix: S3Path) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key + "/", Delimiter="/"):
            for entry in page.get("CommonPrefixes", []):
                yield entry["Prefix"].removeprefix(prefix.key + "/").rstrip("/")

    def download(self, src: S3Path, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(src.bucket, src.key, str(path))
