"""S3 from where the client runs, through the one S3 wrapper (``loka_api.storage.ObjectStore``): the settings of a
``.env`` (or the environment), S3's errors said in words (``StorageError``), and an all-or-nothing upload."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from loka_api.contract import ENV_AWS_ENDPOINT
from loka_client.errors import InvalidInputError, LokaError, StorageError

if TYPE_CHECKING:
    from loka_api.storage import ObjectStore

T = TypeVar("T")


def object_store(settings: Mapping[str, str], endpoint: str | None = None) -> ObjectStore:
    """An ObjectStore with ``settings``' credentials, at ``endpoint`` (else the settings' AWS_ENDPOINT_URL)."""
    from loka_api.storage import ObjectStore

    return ObjectStore(endpoint_url=endpoint or settings.get(ENV_AWS_ENDPOINT) or None, settings=settings)


def talking_to_s3(store: ObjectStore, what: str, action: Callable[[], T]) -> T:
    """``action()``, with S3's and the network's errors as StorageError: which endpoint, what it answered, and
    what to check. Loka's own errors pass through.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from loka_api.checkpoints import CheckpointError

    try:
        return action()
    except (LokaError, CheckpointError):
        raise
    except (ClientError, BotoCoreError, OSError) as error:
        raise storage_error(store, error, what) from error


def storage_error(store: ObjectStore, error: Exception, what: str) -> StorageError:
    from botocore.exceptions import ClientError

    where = store.endpoint
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            hint: str | None = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in .env (or the environment)"
        elif code == "NoSuchBucket":
            hint = "check the bucket name"
        else:
            hint = None
        return StorageError(f"{what}: S3 at {where} answered {code}", hint=hint)
    return StorageError(
        f"{what}: cannot reach S3 at {where} ({type(error).__name__})",
        hint="set AWS_ENDPOINT_URL (in .env) to an endpoint this machine reaches, or pass --endpoint",
    )


def upload_files(
    paths: Sequence[Path], destination: str, *, settings: Mapping[str, str], endpoint: str | None = None
) -> list[str]:
    """Upload ``paths`` under the ``destination`` prefix (``s3://bucket/prefix/``), all or nothing: when one fails,
    those already sent are deleted again (a run must never train on a new train split with an old validation).
    Returns their URIs.
    """
    from loka_api.storage import S3Uri

    try:
        prefix = S3Uri.parse(destination)
    except ValueError as error:
        raise InvalidInputError(f"--upload: {error}", hint="write it as s3://bucket/prefix/") from error
    store = object_store(settings, endpoint)
    done: list[S3Uri] = []

    def send() -> None:
        for path in paths:
            target = prefix.join(path.name)
            store.upload_files([(path, target)])
            done.append(target)

    try:
        talking_to_s3(store, f"uploading to {prefix}", send)
    except BaseException:
        for target in done:
            store.delete(target)
        raise
    return [str(target) for target in done]
