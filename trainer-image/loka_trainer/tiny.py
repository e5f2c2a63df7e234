"""Randomly initialised Qwen2 models with a tokenizer trained here, and toy tasks: nothing is downloaded.

The tokenizer speaks Qwen's chat format (``<|im_start|>``/``<|im_end|>`` and a ChatML template), because
verl picks its rollout token builder by the model's ``model_type`` and the Qwen2 one needs those tokens.
``tiny`` (2 layers, a few hundred thousand parameters) runs on CPU in tests and the local demo; ``0.5b``
has Qwen2.5-0.5B's shape (about 494 M parameters) for timing runs on a GPU.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
# Qwen2's ChatML template without its default system prompt (the toy prompts must stay short), with Qwen2.5's tool
# format (Hermes): the tools' JSON Schemas in the system turn, calls as <tool_call>{json}</tool_call>, results as
# <tool_response> in a user turn. Without tools it renders exactly plain ChatML.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{ '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{%- endfor %}"
    '{{ \'\\n</tools>\\nCall a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{% for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{{ '<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{- call['function']['arguments'] | tojson if call['function']['arguments'] is mapping "
    "else call['function']['arguments'] }}{{ '}</tool_call>' }}"
    "{%- endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int | None = None  # None: the tokenizer's; larger pads the embedding like Qwen's checkpoints do
    max_position_embeddings: int = 512


SHAPES = {
    "tiny": ModelShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
    # Qwen2.5-0.5B's configuration (hidden 896, 24 layers, 14 heads, 2 KV heads, vocab 151936).
    "0.5b": ModelShape(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096),
}  # fmt: skip


# How a task asks for its answer: in GSM8K-style tags (the gsm8k reward), or as a bare number (the demo's reward).
ANSWER_INSTRUCTIONS = {
    "tags": "Think in <think></think>, then answer in <answer></answer>.",
    "number": "Answer with the number only.",
}


def arithmetic_tasks(count: int, *, seed: int = 0, answer: str = "tags") -> list[dict[str, object]]:
    """GSM8K-shaped toy tasks: id, prompt, ground_truth, metadata."""
    rng = random.Random(seed)
    tasks: list[dict[str, object]] = []
    for index in range(count):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        tasks.append(
            {
                "id": f"add-{index}",
                "prompt": f"What is {a} + {b}? {ANSWER_INSTRUCTIONS[answer]}",
                "ground_truth": str(a + b),
                "metadata": {"a": a, "b": b},
            }
        )
    return tasks


def _corpus(seed: int) -> list[str]:
    """Chat-formatted arithmetic, so the prompts, roles and tags are few tokens each (a task's own text comes on top:
    ``extra_text``)."""
    rng = random.Random(seed)
    lines = []
    for answer in ANSWER_INSTRUCTIONS:
        for task in arithmetic_tasks(500, seed=seed + 1, answer=answer):
            lines.append(f"{IM_START}user\n{task['prompt']}{IM_END}\n{IM_START}assistant\n")
    for _ in range(2000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"<think>{a} plus {b} is {a + b}</think><answer>{a + b}</answer>{IM_END}\n")
    return lines


def build_tokenizer(*, seed: int = 0, vocab_size: int = 512, extra_text: Sequence[str] = ()) -> Any:
    """A byte-level BPE tokenizer trained on the toy corpus (and ``extra_text``: what a toy task's prompts and
    answers say, so that they are few tokens too), with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-untyped]
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([*_corpus(seed), *extra_text], trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=IM_END, bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    output: Path, *, seed: int = 0, vocab_size: int = 512, size: str = "tiny", extra_text: Sequence[str] = ()
) -> Path:
    """Write a tokenizer (see build_tokenizer) and a randomly initialised Qwen2 of ``size`` (see SHAPES) into
    ``output``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    try:
        shape = SHAPES[size]
    except KeyError:
        msg = f"size: {size!r} is not a model size (accepted: {', '.join(SHAPES)})"
        raise ValueError(msg) from None
    tokenizer = build_tokenizer(seed=seed, vocab_size=vocab_size, extra_text=extra_text)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=max(shape.vocab_size or 0, len(tokenizer)),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def write_tasks(path: Path, count: int, *, seed: int = 0, answer: str = "tags") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = arithmetic_tasks(count, seed=seed, answer=answer)
    path.write_text("".join(json.dumps(task) + "\n" for task in tasks), encoding="utf-8")
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
