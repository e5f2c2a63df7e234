"""Format reward: 1.0 for exactly one ``<think>…</think>`` followed by exactly one non-empty ``<answer>…</answer>``."""

from __future__ import annotations

import re
from typing import Any

from loka_trainer.rewards.answers import MAX_SOLUTION_CHARS

_WELL_FORMED = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAG = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | int | float | None = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's reward signature; only ``solution_str`` is read."""
    del data_source, ground_truth, extra_info, kwargs
    if not isinstance(solution_str, str) or len(solution_str) > MAX_SOLUTION_CHARS:
        return 0.0
    match = _WELL_FORMED.fullmatch(solution_str)
    if match is None:
        return 0.0
    think, answer = match.group(1), match.group(2)
    # Nested or repeated tags inside the blocks would let a policy smuggle several answers.
    if _TAG.search(think) or _TAG.search(answer) or not answer.strip():
        return 0.0
    return 1.0
