"""Which weights a model folder holds, told by what they predict: the mean log-probability per token of known
responses (teacher-forced). Two folders with the same weights give the same figure; SFT moves it far from the
base model's. Used to prove that a run started from another run's checkpoint, not from the base model.
"""

from __future__ import annotations

from pathlib import Path


def response_logprob(model_dir: Path, conversations: list[list[dict[str, str]]]) -> float:
    """Mean log-probability per token of each conversation's final (assistant) turn, given the turns before it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train(False)
    total, count = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[len(prompt_ids) - 1 :]
            total += float(picked.sum())
            count += int(picked.numel())
    return total / count
