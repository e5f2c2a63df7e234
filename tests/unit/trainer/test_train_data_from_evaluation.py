"""spec.data.fromEvaluation: the trainer stages the preference pairs the operator recorded in status.trainData."""

from __future__ import annotations

import pytest

from loka_api import TrainingRunSpec
from loka_trainer.staging import train_data_uri

PAIRS = "s3://loka/evals/eval-1/preferences.jsonl"


def test_the_trainer_stages_the_recorded_pairs_and_says_when_there_are_none() -> None:
    spec = TrainingRunSpec.model_validate(
        {
            "algorithm": "rm",
            "engine": "trl",
            "image": "img",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"fromEvaluation": "eval-1"},
        }
    )
    assert train_data_uri(spec, PAIRS) == PAIRS
    with pytest.raises(ValueError, match=r"names Evaluation 'eval-1' but status\.trainData has no URI"):
        train_data_uri(spec, None)
    given = spec.model_copy(update={"data": spec.data.model_copy(update={"train": "s3://loka/pairs.jsonl"})})
    assert train_data_uri(given, PAIRS) == "s3://loka/pairs.jsonl"
