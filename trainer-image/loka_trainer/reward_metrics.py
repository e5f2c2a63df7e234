"""A step's reward figures, whatever the reward: the domain metrics logged every training step (verl logs a reward's
extra keys only at validation; both engines log these through Loka's own hooks).

- ``reward/total/{mean,std,min,max}``: the score;
- ``reward/<component>/{mean,std,min,max}``: each numeric key the reward returned beside ``score`` (a judge's
  bookkeeping keys aside);
- ``judge/{parse_rate,error_rate,latency_s/mean,latency_s/max,tokens}`` for each judge component (named after it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loka_trainer.rewards.compose import component_stats
from loka_trainer.rewards.judge import COMPONENT_SUFFIXES, components_step_metrics

SCORE = "score"
_JUDGE_MARKERS = ("_error", "_latency_s")


def as_reward_row(result: Any) -> dict[str, float]:
    """A reward function's return (a number, or a dict with ``score``) as one row of numbers."""
    if isinstance(result, Mapping):
        row = {SCORE: float(result[SCORE])}
        row.update(
            {
                str(key): float(value)
                for key, value in result.items()
                if key != SCORE and isinstance(value, int | float) and not isinstance(value, bool)
            }
        )
        row.update({str(k): float(v) for k, v in result.items() if isinstance(v, bool)})
        return row
    return {SCORE: float(result)}


def judge_names(keys: Sequence[str]) -> list[str]:
    """The judge components among a row's keys (a judge named J returns J, J_ok, J_error, J_latency_s, J_tokens)."""
    present = set(keys)
    return [key for key in keys if all(f"{key}{marker}" in present for marker in _JUDGE_MARKERS)]


def reward_step_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    keys = [key for key in rows[0] if key != SCORE]
    judges = judge_names(keys)
    bookkeeping = {f"{judge}{suffix}" for judge in judges for suffix in COMPONENT_SUFFIXES if suffix}
    figures = component_stats(rows, [key for key in keys if key not in bookkeeping])
    for judge in judges:
        figures.update(
            components_step_metrics(rows, name=judge, prefix="judge" if judge == "judge" else f"judge/{judge}")
        )
    return figures
