"""SFT on the trainer side: demonstrations become conversations, bad rows are named, and the verl SFT entry point
runs verl's own trainer and config with the checkpoint upload added.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loka_api import TrainingRunSpec
from loka_api.render import StagedPaths, render_verl_overrides
from loka_trainer.engines.trl import sft_example
from loka_trainer.sft_data import SFTDataError, demonstrations_to_conversations, read_conversations
from loka_trainer.tiny import write_sft_demonstrations
from loka_trainer.verl_sft import UploadingCheckpointHandler


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_demonstrations_become_conversations_ending_with_the_response(tmp_path: Path) -> None:
    source = write(
        tmp_path / "demos.parquet",
        [
            {"question": "What is 2 + 2?", "answer": "4"},
            {"question": "Name a colour.", "answer": "Blue"},
        ],
    )
    out = demonstrations_to_conversations(
        source, tmp_path / "train.parquet", prompt_key="question", response_key="answer", label="s3://d/demos"
    )
    assert read_conversations(out, "messages") == [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}],
    ]


def test_chat_prompts_keep_their_turns(tmp_path: Path) -> None:
    train, _ = write_sft_demonstrations(tmp_path / "raw", 16)
    out = demonstrations_to_conversations(
        train, tmp_path / "train.parquet", prompt_key="prompt", response_key="response", label="train"
    )
    first = read_conversations(out, "messages")[0]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[1]["content"].startswith("<think>") and first[1]["content"].endswith("</answer>")


@pytest.mark.parametrize(
    ("rows", "prompt_key", "response_key", "words"),
    [
        ([{"q": "x", "a": "y"}], "prompt", "a", "spec.data.promptKey: column 'prompt' is not in s3://d/t (its columns"),
        ([{"q": "x", "a": "y"}], "q", "response", "spec.data.responseKey: column 'response' is not in"),
        ([{"q": "x", "a": "y"}, {"q": "z", "a": ""}], "q", "a", "s3://d/t row 1 column 'a': expected the response"),
        ([{"q": "", "a": "y"}], "q", "a", "s3://d/t row 0 column 'q': the prompt is empty"),
    ],
)
def test_bad_demonstrations_are_named_by_row_and_column(
    tmp_path: Path, rows: list[dict[str, Any]], prompt_key: str, response_key: str, words: str
) -> None:
    source = write(tmp_path / "t.parquet", rows)
    with pytest.raises(SFTDataError) as caught:
        demonstrations_to_conversations(
            source, tmp_path / "out.parquet", prompt_key=prompt_key, response_key=response_key, label="s3://d/t"
        )
    assert words in str(caught.value)
    assert not (tmp_path / "out.parquet").exists()


def test_a_conversation_that_does_not_end_with_the_assistant_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.parquet", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(SFTDataError, match="must end with the assistant's turn"):
        read_conversations(path, "messages")


def test_trl_learns_only_the_final_assistant_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert sft_example(messages, chat=True) == {"prompt": messages[:2], "completion": [messages[2]]}
    flat = sft_example(messages, chat=False)
    assert flat["prompt"].endswith("user: 2 + 2?\nassistant:") and flat["completion"] == " 4"


# ---------------------------------------------------------------------------------------- verl SFT


class RecordingHandler:
    default_local_dir = "/work/checkpoints"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def save_checkpoint(self, step: int) -> None:
        self.calls.append(("save", step))

    def load_checkpoint(self) -> int:
        return 7


class RecordingCallback:
    def __init__(self, calls: list[tuple[str, int]]) -> None:
        self.calls = calls
        self.folders: list[str] = []

    def on_save(self, trainer: Any, global_step: int, checkpoint_dir: str, **kwargs: Any) -> None:
        self.calls.append(("upload", global_step))
        self.folders.append(checkpoint_dir)


def test_each_verl_sft_checkpoint_is_uploaded_right_after_verl_saved_it() -> None:
    inner = RecordingHandler()
    callback = RecordingCallback(inner.calls)
    handler = UploadingCheckpointHandler(inner, callback, trainer=object())
    handler.save_checkpoint(20)
    assert inner.calls == [("save", 20), ("upload", 20)]
    assert callback.folders == ["/work/checkpoints/global_step_20"]
    assert handler.load_checkpoint() == 7  # resume is verl's own
    assert handler.default_local_dir == "/work/checkpoints"


SFT_SPEC = {
    "algorithm": "sft",
    "image": "img",
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "data": {"train": "s3://d/t.parquet", "validation": "s3://d/v.parquet", "responseKey": "answer"},
    "training": {"batchSize": 16, "maxSteps": 10, "learningRate": 2.0e-5},
    "resources": {"workers": 2, "gpusPerWorker": 4},
    "checkpoints": {"uri": "s3://ckpt/", "every": 5, "keep": 2},
    "verlOverrides": ["optim.weight_decay=0.05"],
}


def sft_overrides(tmp_path: Path) -> list[str]:
    paths = StagedPaths(
        model=str(tmp_path / "model"),
        train_files=tmp_path / "train.parquet",
        val_files=tmp_path / "validation.parquet",
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
    )
    spec = TrainingRunSpec.model_validate(SFT_SPEC)
    return render_verl_overrides(spec, run_name="sft", namespace="team-a", paths=paths)


def test_the_verl_sft_entry_point_composes_the_rendered_overrides_in_verls_own_hydra_main(tmp_path: Path) -> None:
    """Hydra's ``--cfg job`` prints the job config verl's trainer would get, without starting it."""
    argv = [sys.executable, "-m", "loka_trainer.verl_sft", "--cfg", "job", *sft_overrides(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    config = yaml.safe_load(result.stdout)
    assert config["trainer"]["nnodes"] == 2 and config["trainer"]["n_gpus_per_node"] == 4
    assert config["trainer"]["save_freq"] == 5 and config["trainer"]["total_training_steps"] == 10
    assert config["optim"]["lr"] == 2.0e-5 and config["optim"]["weight_decay"] == 0.05
    assert config["data"]["messages_key"] == "messages"


def test_the_rendered_sft_config_builds_verls_own_config_objects(tmp_path: Path) -> None:
    """What verl's SFT trainer converts first (engine, optimiser, checkpoint), checked by verl's dataclasses."""
    from verl.utils.config import omega_conf_to_dataclass

    from loka_api.render import compose_verl_config

    config = compose_verl_config(sft_overrides(tmp_path), config_name="sft_trainer_engine")
    optim = omega_conf_to_dataclass(config.optim)
    assert (optim.lr, optim.weight_decay) == (2.0e-5, 0.05)
    omega_conf_to_dataclass(config.engine)
    checkpoint = omega_conf_to_dataclass(config.checkpoint)
    assert "model" in checkpoint.save_contents
