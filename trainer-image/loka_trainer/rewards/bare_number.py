"""Answer-format reward: how much of the response is a bare number (the share of its characters that are digits).

For the local demo and smoke tests: a randomly initialised model cannot add, but it learns this format within a
few GRPO steps, so the reward visibly climbs. It ignores ``ground_truth``: correctness is what the GSM8K reward
(``loka_trainer.rewards.gsm8k``) scores, for real models.
"""

from __future__ import annotations

from typing import Any

from loka_trainer.rewards.answers import MAX_SOLUTION_CHARS


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | int | float | None = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's reward signature; 1.0 for a response that is only digits, 0.0 for an empty or digit-free one."""
    del data_source, ground_truth, extra_info, kwargs
    if not isinstance(solution_str, str) or len(solution_str) > MAX_SOLUTION_CHARS:
        return 0.0
    text = solution_str.strip()
    return sum(char.isdigit() for char in text) / len(text) if text else 0.0
