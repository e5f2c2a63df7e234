"""S3 URIs and checkpoint locations as users write them in a TrainingRun."""

from __future__ import annotations

import pytest

from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore

# Nothing listens there: these tests only compute locations.
NOWHERE = ObjectStore(endpoint_url="http://127.0.0.1:9")


def test_run_checkpoints_live_under_namespace_run_name_and_uid() -> None:
    store = CheckpointStore.for_run(NOWHERE, "s3://ckpt/", namespace="loka", run_name="qwen", uid="7f1e", keep=3)
    assert str(store.step_uri(100)) == "s3://ckpt/loka/qwen/7f1e/global_step_100"
    assert str(store.marker_uri) == "s3://ckpt/loka/qwen/7f1e/latest"
    assert store.run_uid == "7f1e"


def test_listing_prefix_never_matches_a_longer_sibling() -> None:
    assert S3Uri.parse("s3://b/runs/global_step_1").as_prefix() == "runs/global_step_1/"


@pytest.mark.parametrize("uri", ["ckpt/x", "s3://", "s3:///key", "http://b/k"])
def test_non_s3_uris_are_rejected_with_the_expected_form(uri: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        S3Uri.parse(uri)


def test_explicit_resume_uri_names_its_step() -> None:
    store, step = CheckpointStore.for_checkpoint_uri(NOWHERE, "s3://ckpt/loka/old-run/global_step_40/")
    assert step == 40
    assert str(store.step_uri(40)) == "s3://ckpt/loka/old-run/global_step_40"


def test_resume_value_that_is_not_a_step_folder_is_rejected_with_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"expected auto, never or s3://…/global_step_<N>, got 's3://b/x/latest'"):
        CheckpointStore.for_checkpoint_uri(NOWHERE, "s3://b/x/latest")


def test_keep_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"checkpoints\.keep must be at least 1, got 0"):
        CheckpointStore(NOWHERE, S3Uri("b", "p"), keep=0)


def test_node_manifests_merge_into_one_listing_every_shard_once() -> None:
    from loka_api.manifest import ManifestFile
    from loka_trainer.checkpoints import merge_node_files

    head = (ManifestFile("data.pt", 10, "a" * 64), ManifestFile("actor/fsdp_config.json", 5, "b" * 64))
    worker = (ManifestFile("actor/model_world_size_2_rank_1.pt", 99, "c" * 64), head[1])
    merged = merge_node_files([head, worker, ()])
    assert [f.path for f in merged] == ["actor/fsdp_config.json", "actor/model_world_size_2_rank_1.pt", "data.pt"]


def test_the_same_file_with_different_bytes_on_two_nodes_is_a_torn_checkpoint() -> None:
    from loka_api.checkpoints import CheckpointError
    from loka_api.manifest import ManifestFile
    from loka_trainer.checkpoints import merge_node_files

    with pytest.raises(CheckpointError, match=r"data\.pt differs between nodes"):
        merge_node_files([(ManifestFile("data.pt", 10, "a" * 64),), (ManifestFile("data.pt", 10, "f" * 64),)])


def test_a_writer_travels_as_one_environment_string() -> None:
    from loka_api.manifest import Writer

    writer = Writer(3, "qwen-gsm8k-x7k2p")
    assert Writer.from_env(writer.to_env()) == writer
    assert Writer.from_env("2/host:1234") == Writer(2, "host:1234")
    with pytest.raises(ValueError, match=r"<attempt>/<holder>.*got 'x7k2p'"):
        Writer.from_env("x7k2p")


def test_a_store_without_a_writer_reads_only() -> None:
    from loka_api.manifest import ManifestFile

    store = CheckpointStore(NOWHERE, S3Uri("b", "p"), keep=1)
    with pytest.raises(ValueError, match="has no writer: it reads only"):
        store.commit(1, (ManifestFile("data.pt", 1, "a" * 64),))


def test_a_node_needs_the_shared_files_and_only_its_own_ranks_shards() -> None:
    from loka_api.checkpoints import files_for_ranks
    from loka_api.manifest import ManifestFile

    names = [
        "data.pt",
        "actor/fsdp_config.json",
        "actor/huggingface/config.json",
        *(f"actor/{kind}_world_size_16_rank_{rank}.pt" for rank in (0, 7, 8, 15) for kind in ("model", "optim")),
    ]
    files = [ManifestFile(name, 1, "a" * 64) for name in names]
    second_node = {f.path for f in files_for_ranks(files, frozenset(range(8, 16)))}
    assert second_node == set(names[:3]) | {
        f"actor/{k}_world_size_16_rank_{r}.pt" for r in (8, 15) for k in ("model", "optim")
    }
    assert {f.path for f in files_for_ranks(files, frozenset())} == set(names[:3])  # the GPU-less head
    assert len(files_for_ranks(files, None)) == len(files)  # one process loads everything (trl)
