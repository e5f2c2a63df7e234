"""Fixtures for the trainer's integration tests: MinIO through the cluster fixture, checkpoint-shaped folders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loka_trainer.storage import ObjectStore, S3Uri

BUCKET = "loka"


def write_verl_checkpoint(folder: Path, *, step: int, shard_bytes: int = 256 * 1024, world_size: int = 2) -> Path:
    """A folder shaped like verl's global_step_N (FSDP shards per rank, HF config, dataloader state)."""
    checkpoint = folder / f"global_step_{step}"
    actor = checkpoint / "actor"
    (actor / "huggingface").mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        for kind in ("model", "optim", "extra_state"):
            size = shard_bytes if kind != "extra_state" else 1024
            (actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt").write_bytes(os.urandom(size))
    (actor / "fsdp_config.json").write_text(f'{{"FSDP_version": 2, "world_size": {world_size}}}')
    (actor / "huggingface" / "config.json").write_text('{"model_type": "qwen2"}')
    (actor / "huggingface" / "tokenizer.json").write_text('{"version": "1.0"}')
    (checkpoint / "data.pt").write_bytes(os.urandom(2048))
    return checkpoint


@pytest.fixture
def s3_env(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The cluster's MinIO credentials in this process's environment (where the trainer reads them)."""
    env = {k: v for k, v in cluster.env.items() if k.startswith("AWS_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return env


@pytest.fixture
def object_store(s3_env: dict[str, str]) -> ObjectStore:
    return ObjectStore()


@pytest.fixture
def s3_prefix(object_store: ObjectStore, request: pytest.FixtureRequest) -> Iterator[S3Uri]:
    """A unique prefix in the loka bucket, emptied afterwards."""
    prefix = S3Uri(BUCKET, f"tests/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}")
    yield prefix
    object_store.delete_prefix(prefix)
