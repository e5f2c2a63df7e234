"""Reward functions only the end-to-end tests use. The demo's Ray head stands in for the trainer image and has
this folder on its path, as a team's image carries its own reward functions."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from loka_api.contract import ENV_RUN_NAME, ENV_RUN_NAMESPACE, ENV_WORK_DIR, SECRET_ENV
from loka_trainer.rewards import bare_number


def quote_the_credentials(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> float:
    """Fails as a careless reward function might: with every secret it can see in its error message."""
    seen = [f"{name}={os.environ[name]}" for name in sorted(SECRET_ENV) if os.environ.get(name)]
    raise RuntimeError(f"cannot score {solution_str[:20]!r} for {data_source}; environment: {', '.join(seen)}")


# A run scored by held_until_released waits in its first scoring until the test creates this file (or HOLD_SECONDS).
GATES = "e2e-gates"
HOLD_SECONDS = 300.0


def gate_path(work_dir: Path, namespace: str, run: str) -> Path:
    return work_dir / GATES / f"{namespace}.{run}"


def held_until_released(
    data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any
) -> float:
    """The demo's bare-number reward, once the test has released the run. Until then the trainer waits in its first
    scoring, so a test sees a run that is surely training (its Ray cluster up) for as long as it needs, and then
    a short one: the gate is ``gate_path($LOKA_WORK_DIR, namespace, run)``, created by the test."""
    gate = gate_path(Path(os.environ[ENV_WORK_DIR]), os.environ[ENV_RUN_NAMESPACE], os.environ[ENV_RUN_NAME])
    deadline = time.monotonic() + HOLD_SECONDS
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return bare_number.compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
