"""The tiny model speaks Qwen's chat format, so verl's rollout accepts it (verl picks a token builder by model type)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loka_trainer.tiny import IM_END, SHAPES, build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tokenizer_of(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_verl_builds_its_qwen_token_builder_for_the_tiny_model_and_continues_a_conversation(tiny_model: Path) -> None:
    from verl.utils.tokenizer.continuous_token import QwenContinuousTokenBuilder
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tokenizer = tokenizer_of(tiny_model)
    model_type = json.loads((tiny_model / "config.json").read_text())["model_type"]
    # What verl's agent loop does before the first rollout; it raised "does not define required token" before.
    builder = create_continuous_token_builder(tokenizer, hf_model_type=model_type)
    assert isinstance(builder, QwenContinuousTokenBuilder)

    question = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = builder.build_initial_tokens(question)
    assert tokenizer.decode(prompt) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    generated = [*tokenizer.encode("<answer>5</answer>", add_special_tokens=False), tokenizer.eos_token_id]
    answered = [*question, {"role": "assistant", "content": "<answer>5</answer>"}]
    follow_up = [*answered, {"role": "user", "content": "And 4 + 4?"}]
    merged = builder.merge_context_tokens(answered, follow_up, [*prompt, *generated])
    # Generation stops at <|im_end|>; the builder adds the newline the template renders after it.
    assert tokenizer.decode(merged.token_ids) == tokenizer.apply_chat_template(
        follow_up, add_generation_prompt=True, tokenize=False
    )


def test_generation_stops_at_im_end_and_pads_with_endoftext(tiny_model: Path) -> None:
    tokenizer = tokenizer_of(tiny_model)
    config = json.loads((tiny_model / "config.json").read_text())
    generation = json.loads((tiny_model / "generation_config.json").read_text())
    assert tokenizer.eos_token == IM_END
    assert config["eos_token_id"] == generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(IM_END)
    assert config["pad_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.encode("\n", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("Ċ")]


def test_an_unknown_size_is_refused_naming_the_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"size: '7b' is not a model size \(accepted: tiny, 0.5b\)"):
        build_tiny_model(tmp_path, size="7b")
    assert "0.5b" in SHAPES
