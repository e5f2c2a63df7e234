"""S3 URIs and checkpoint locations as users write them in a TrainingRun."""

from __future__ import annotations

import pytest

from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.storage import ObjectStore, S3Uri

# Nothing listens there: these tests only compute locations.
NOWHERE = ObjectStore(endpoint_url="http://127.0.0.1:9")


def test_run_checkpoints_live_under_namespace_and_run_name() -> None:
    store = CheckpointStore.for_run(NOWHERE, "s3://ckpt/", namespace="loka", run_name="qwen", keep=3)
    assert str(store.step_uri(100)) == "s3://ckpt/loka/qwen/global_step_100"
    assert str(store.marker_uri) == "s3://ckpt/loka/qwen/latest"


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
    from loka_api.manifest import ManifestFile
    from loka_trainer.checkpoints import CheckpointError, merge_node_files

    with pytest.raises(CheckpointError, match=r"data\.pt differs between nodes"):
        merge_node_files([(ManifestFile("data.pt", 10, "a" * 64),), (ManifestFile("data.pt", 10, "f" * 64),)])
