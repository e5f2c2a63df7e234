"""Environment the trainer runs with: what the operator injects, and what the runner forwards to verl's actors.

Secrets (AWS keys, WANDB_API_KEY, HF_TOKEN) only ever arrive through the pod's environment (secretKeyRef);
they are never put on a command line or into Ray's runtime_env, which verl prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from loka_api.contract import ENV_CHECKPOINT_KEEP, ENV_CHECKPOINT_PREFIX, ENV_WANDB_KEY, SECRET_ENV


@dataclass(frozen=True)
class CallbackSettings:
    """Where the verl checkpoint callback uploads, read from the environment of the actor it runs in."""

    prefix: str
    keep: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CallbackSettings | None:
        env = os.environ if environ is None else environ
        prefix = env.get(ENV_CHECKPOINT_PREFIX)
        if not prefix:
            return None
        return cls(prefix=prefix, keep=int(env.get(ENV_CHECKPOINT_KEEP, "3")))


def wandb_mode(requested: str | None, environ: Mapping[str, str] | None = None) -> str:
    """online with a key, offline without one (a run never fails for lack of a W&B key)."""
    env = os.environ if environ is None else environ
    if requested == "disabled":
        return "disabled"
    if requested == "offline" or not env.get(ENV_WANDB_KEY):
        return "offline"
    return "online"


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace the value of every secret variable in ``text`` (for messages that reach status or logs)."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name}>")
    return text
