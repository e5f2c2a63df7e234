"""builtin:// inputs: the trainer builds the model and the dataset itself, and touches no object store for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from loka_api import TrainingRunSpec
from loka_api.storage import ObjectStore
from loka_trainer.staging import parquet_rows, stage_inputs

# Nothing listens on port 9: any S3 call would fail, so staging that succeeds proves nothing was fetched.
NO_S3 = ObjectStore(endpoint_url="http://127.0.0.1:9")


def spec_with(model: str, train: str, validation: str | None = None) -> TrainingRunSpec:
    data = {"train": train, **({"validation": validation} if validation else {})}
    return TrainingRunSpec.model_validate({"image": "x", "model": {"uri": model}, "data": data})


def test_builtin_model_and_data_are_built_at_the_paths_s3_inputs_would_use(tmp_path: Path) -> None:
    spec = spec_with("builtin://tiny-qwen2", "builtin://arithmetic", "builtin://arithmetic")

    staged = stage_inputs(spec, tmp_path, NO_S3)

    assert staged.model == str(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    assert staged.train_files == tmp_path / "data" / "train.parquet"
    assert staged.val_files == tmp_path / "data" / "validation.parquet"
    train, validation = parquet_rows(staged.train_files), parquet_rows(staged.val_files)
    assert train + validation == 1024
    assert 0 < validation < train  # each field gets its own split
    before = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    stage_inputs(spec, tmp_path, NO_S3)  # a retry on the same node reuses what it built
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        ("builtin://gpt-5", "builtin://arithmetic", "spec.model.uri: 'builtin://gpt-5' is not a built-in input "
         "(accepted: builtin://tiny-qwen2, builtin://random-qwen2-0.5b)"),
        ("hf://Qwen/Qwen2.5-0.5B", "builtin://gsm8k", "spec.data.train: 'builtin://gsm8k' is not a built-in input "
         "(accepted: builtin://arithmetic)"),
    ],
)  # fmt: skip
def test_an_unknown_builtin_input_is_refused_naming_the_field_and_the_accepted_ones(
    tmp_path: Path, model: str, train: str, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        stage_inputs(spec_with(model, train), tmp_path, NO_S3)
    assert str(refused.value) == message
    assert not (tmp_path / "model").exists()


def test_an_sft_run_on_builtin_arithmetic_trains_on_worked_answers_of_the_same_tasks(tmp_path: Path) -> None:
    from loka_trainer.sft_data import read_conversations

    spec = TrainingRunSpec.model_validate(
        {
            "image": "x",
            "algorithm": "sft",
            "model": {"uri": "builtin://tiny-qwen2"},
            "data": {"train": "builtin://arithmetic", "validation": "builtin://arithmetic", "responseKey": "response"},
        }
    )

    staged = stage_inputs(spec, tmp_path, NO_S3)

    assert staged.val_files is not None
    conversations = read_conversations(staged.train_files, "messages")
    held_out = read_conversations(staged.val_files, "messages")
    assert len(conversations) + len(held_out) == 1024 and 0 < len(held_out) < len(conversations)
    assert [m["role"] for m in conversations[0]] == ["user", "assistant"]
    assert "<answer>" in conversations[0][-1]["content"]
