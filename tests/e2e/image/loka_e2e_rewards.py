"""Reward functions only the end-to-end tests use. The demo's Ray head stands in for the trainer image and has
this folder on its path, as a team's image carries its own reward functions."""

from __future__ import annotations

import os
from typing import Any

from loka_api.contract import SECRET_ENV


def quote_the_credentials(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None) -> float:
    """Fails as a careless reward function might: with every secret it can see in its error message."""
    seen = [f"{name}={os.environ[name]}" for name in sorted(SECRET_ENV) if os.environ.get(name)]
    raise RuntimeError(f"cannot score {solution_str[:20]!r} for {data_source}; environment: {', '.join(seen)}")
