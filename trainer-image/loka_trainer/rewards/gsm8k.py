"""GSM8K-style reward: 1.0 when the final answer equals the ground truth numerically (or textually), else 0.0."""

from __future__ import annotations

from typing import Any

from loka_trainer.rewards.answers import extract_final_answer, normalize_number


def answers_match(answer: str, ground_truth: str) -> bool:
    """Numbers compare by value (``1,000`` == ``1000.0``); anything else compares case- and space-insensitively."""
    expected = normalize_number(ground_truth)
    if expected is not None:
        return normalize_number(answer) == expected
    return " ".join(answer.split()).casefold() == " ".join(ground_truth.split()).casefold()


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | int | float,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's reward signature; ``data_source``, ``extra_info`` and extra kwargs are accepted and unused."""
    del data_source, extra_info, kwargs
    if not isinstance(solution_str, str):
        return 0.0
    answer = extract_final_answer(solution_str)
    if answer is None:
        return 0.0
    return 1.0 if answers_match(answer, str(ground_truth)) else 0.0
