"""spec.model.fromRun on a multi-node run: the head downloads (and merges) the source run's checkpoint once; a node
told that the head staged it copies the head's folder through Ray and never fetches the checkpoint itself. One local
Ray node plays both ends here (test_two_nodes.py copies between two nodes with disks of their own)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loka_trainer import nodes
from loka_trainer.nodes import current_node_id, stage_on_node

UNREACHABLE_S3 = "http://127.0.0.1:9"  # nothing listens: any fetch of the source checkpoint fails


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    # With RAY_AUTH_MODE=disabled (tests/conftest.py): ray.init would otherwise write ~/.ray/auth_token and set
    # RAY_AUTH_MODE=token in this process, and later tests' Ray heads and trainers could not authenticate.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # never another test's
    try:
        yield
    finally:
        ray.shutdown()


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_node_copies_the_model_the_head_staged_and_never_fetches_the_source_checkpoint(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "COPY_CHUNK_BYTES", 1000)  # several chunks per file, a few in flight
    model = tmp_path / "model"  # what the head staged: weights merged from the source's checkpoint
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "model.safetensors").write_bytes(os.urandom(4500))
    (model / "tokenizer" / "vocab.txt").write_bytes(b"")
    staged = digests(model)
    spec = {"image": "x", "model": {"fromRun": {"name": "source"}}, "data": {"train": "builtin://arithmetic"}}
    source = "s3://ckpt/loka/ns/source/uid-0/global_step_3"

    stage_on_node(json.dumps(spec), str(tmp_path), UNREACHABLE_S3, None, None, source, current_node_id())

    assert digests(model) == staged
    assert not (tmp_path / "model.partial").exists() and not (tmp_path / "model.checkpoint").exists()
    assert list((tmp_path / "data").rglob("*.parquet")), "the data is staged beside the model"
