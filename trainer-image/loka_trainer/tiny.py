"""A tiny randomly initialised causal LM with a tokenizer trained here, for CPU runs (tests, the local demo).

Nothing is downloaded: the tokenizer is a byte-level BPE trained on generated arithmetic text, the model a
2-layer Qwen2 of a few hundred thousand parameters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def arithmetic_tasks(count: int, *, seed: int = 0) -> list[dict[str, object]]:
    """GSM8K-shaped toy tasks: id, prompt, ground_truth, metadata."""
    rng = random.Random(seed)
    tasks: list[dict[str, object]] = []
    for index in range(count):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        tasks.append(
            {
                "id": f"add-{index}",
                "prompt": f"What is {a} + {b}? Think in <think></think>, then answer in <answer></answer>.",
                "ground_truth": str(a + b),
                "metadata": {"a": a, "b": b},
            }
        )
    return tasks


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? <think>{a} plus {b} is {a + b}</think><answer>{a + b}</answer>")
    return lines


def build_tiny_model(output: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tokenizer and a randomly initialised 2-layer Qwen2 model into ``output``; returns ``output``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-untyped]
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    fast.save_pretrained(output)
    return output


def write_tasks(path: Path, count: int, *, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(task) + "\n" for task in arithmetic_tasks(count, seed=seed)), encoding="utf-8")
    return path


def arithmetic_demonstration(task: dict[str, object]) -> str:
    """The worked answer to one arithmetic task, in the format the prompt asks for (what SFT teaches)."""
    metadata = task["metadata"]
    assert isinstance(metadata, dict)
    a, b = metadata["a"], metadata["b"]
    return f"<think>{a} plus {b} is {a + b}</think><answer>{a + b}</answer>"


def write_sft_demonstrations(
    output_dir: Path, count: int, *, seed: int = 0, validation_fraction: float = 0.125
) -> tuple[Path, Path]:
    """``train.parquet`` and ``validation.parquet`` of SFT demonstrations: a chat ``prompt`` and its ``response``,
    split by task id like ``loka-trainer dataset`` splits the RL tasks.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loka_api.dataset import in_validation

    rows: dict[str, list[dict[str, object]]] = {"train": [], "validation": []}
    for task in arithmetic_tasks(count, seed=seed):
        split = "validation" if in_validation(str(task["id"]), validation_fraction, "loka") else "train"
        prompt = [{"role": "user", "content": str(task["prompt"])}]
        rows[split].append({"prompt": prompt, "response": arithmetic_demonstration(task)})
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = (output_dir / "train.parquet", output_dir / "validation.parquet")
    for path, split in zip(paths, ("train", "validation"), strict=True):
        pq.write_table(pa.Table.from_pylist(rows[split]), path)
    return paths
