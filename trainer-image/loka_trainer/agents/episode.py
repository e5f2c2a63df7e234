"""What one episode in an environment did, as the agent loops record it and the rewards and metrics read it.

The record travels inside verl's per-trajectory ``extra_fields`` (and, for the reward function, inside
``extra_info``) under ``EPISODE_KEY``, as a plain dict of numbers so that Ray, TransferQueue and pyarrow carry it
unchanged. Nothing here imports the MCP SDK or verl.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# The key of the episode record in extra_fields / extra_info.
EPISODE_KEY = "loka_env"
# The key of the episode's messages (the conversation, tool results included) for judges and exports.
MESSAGES_KEY = "loka_messages"


@dataclass
class EpisodeStats:
    """Counters of one trajectory. ``task_completion`` is the environment's own evaluation (0.0 when it could not
    be had); ``env_error`` says the environment failed (connect, setup, evaluate), which the rubric and the failure
    policy (drop | zero) act on.
    """

    task_completion: float = 0.0
    tool_attempts: int = 0  # tool calls the model tried, malformed ones included
    tool_successes: int = 0  # calls that ran and did not report an error
    tool_errors: int = 0  # calls that ran and reported an error, unknown tools, timeouts
    malformed_calls: int = 0  # tool-call text that did not parse (verl's parsers drop these silently)
    assistant_turns: int = 0
    final_answer: bool = False  # the last assistant turn answered (no tool call) before a limit stopped it
    setup_ok: bool = False
    evaluate_ok: bool = False
    env_error: bool = False
    session_seconds: float = 0.0

    @property
    def tool_success_rate(self) -> float:
        """Calls that succeeded among the calls that parsed (0 when the model called no tool)."""
        ran = self.tool_attempts - self.malformed_calls
        return self.tool_successes / ran if ran > 0 else 0.0

    @property
    def format_compliance(self) -> float:
        """1 - malformed/attempts when the episode ended with an answer; 0 when it never answered."""
        if not self.final_answer:
            return 0.0
        return 1.0 - self.malformed_calls / max(1, self.tool_attempts)

    def as_record(self) -> dict[str, float | int | bool]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> EpisodeStats | None:
        """The stats from an ``extra_fields`` record; None for a trajectory that ran no episode."""
        if not isinstance(record, Mapping):
            return None
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, kind in known.items():
            if name not in record or record[name] is None:
                continue
            value = record[name]
            values[name] = bool(value) if kind == "bool" else int(value) if kind == "int" else float(value)
        return cls(**values)


def episode_of(extra: Mapping[str, Any] | None) -> EpisodeStats | None:
    """The episode record in a trajectory's extra_fields or a reward call's extra_info."""
    return EpisodeStats.from_record((extra or {}).get(EPISODE_KEY))


def _rate(values: Iterable[bool]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def environment_metrics(episodes: Iterable[EpisodeStats], prefix: str = "env/") -> dict[str, float]:
    """One step's environment figures: tool calls per episode, parse and success rates, setup/evaluate success,
    environment errors, session seconds. Empty when no episode ran (a run without an environment).
    """
    items = list(episodes)
    if not items:
        return {}
    attempts = sum(e.tool_attempts for e in items)
    malformed = sum(e.malformed_calls for e in items)
    ran = attempts - malformed
    seconds = [e.session_seconds for e in items]
    return {
        f"{prefix}episodes": float(len(items)),
        f"{prefix}tool_calls/mean": attempts / len(items),
        f"{prefix}tool_parse_rate": (ran / attempts) if attempts else 1.0,
        f"{prefix}tool_success_rate": (sum(e.tool_successes for e in items) / ran) if ran else 0.0,
        f"{prefix}format_compliance_rate": _rate(e.format_compliance >= 1.0 for e in items),
        f"{prefix}setup_ok_rate": _rate(e.setup_ok for e in items),
        f"{prefix}evaluate_ok_rate": _rate(e.evaluate_ok for e in items),
        f"{prefix}error_rate": _rate(e.env_error for e in items),
        f"{prefix}turns/mean": sum(e.assistant_turns for e in items) / len(items),
        f"{prefix}session_seconds/mean": statistics.fmean(seconds),
        f"{prefix}session_seconds/max": max(seconds),
    }
