"""Environment the trainer runs with: what the operator injects, and what the runner forwards to verl's actors.

Secrets (AWS keys, WANDB_API_KEY, HF_TOKEN) only ever arrive through the pod's environment (secretKeyRef);
they are never put on a command line or into Ray's runtime_env, which verl prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# Non-secret settings the runner hands to the verl checkpoint callback through Ray's runtime_env.
CHECKPOINT_PREFIX_ENV = "LOKA_CHECKPOINT_PREFIX"
CHECKPOINT_KEEP_ENV = "LOKA_CHECKPOINT_KEEP"
WANDB_KEY_ENV = "WANDB_API_KEY"
WANDB_MODE_ENV = "WANDB_MODE"
HF_TOKEN_ENV = "HF_TOKEN"
SECRET_ENV = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", WANDB_KEY_ENV, HF_TOKEN_ENV})


@dataclass(frozen=True)
class CallbackSettings:
    """Where the verl checkpoint callback uploads, read from the environment of the actor it runs in."""

    prefix: str
    keep: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CallbackSettings | None:
        env = os.environ if environ is None else environ
        prefix = env.get(CHECKPOINT_PREFIX_ENV)
        if not prefix:
            return None
        return cls(prefix=prefix, keep=int(env.get(CHECKPOINT_KEEP_ENV, "3")))


def wandb_mode(requested: str | None, environ: Mapping[str, str] | None = None) -> str:
    """online with a key, offline without one (a run never fails for lack of a W&B key)."""
    env = os.environ if environ is None else environ
    if requested == "disabled":
        return "disabled"
    if requested == "offline" or not env.get(WANDB_KEY_ENV):
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
