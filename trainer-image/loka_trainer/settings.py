"""Environment the trainer runs with: what the operator injects, and what the runner forwards to verl's actors.

Secrets (AWS keys, WANDB_API_KEY, HF_TOKEN) only ever arrive through the pod's environment (secretKeyRef);
they are never put on a command line or into Ray's runtime_env, which verl prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from loka_api.contract import (
    ENV_CHECKPOINT_KEEP,
    ENV_CHECKPOINT_PREFIX,
    ENV_CHECKPOINT_WRITER,
    ENV_RUN_UID,
    ENV_WANDB_KEY,
    SECRET_ENV,
)
from loka_api.manifest import Writer


@dataclass(frozen=True)
class CallbackSettings:
    """Where the verl checkpoint callback uploads and as which attempt, read from the environment of the actor it
    runs in (``loka-trainer run`` puts it in verl's runtime_env).
    """

    prefix: str
    keep: int
    writer: Writer
    run_uid: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CallbackSettings | None:
        env = os.environ if environ is None else environ
        prefix = env.get(ENV_CHECKPOINT_PREFIX)
        if not prefix:
            return None
        writer = env.get(ENV_CHECKPOINT_WRITER)
        if not writer:
            msg = f"{ENV_CHECKPOINT_PREFIX} is set but {ENV_CHECKPOINT_WRITER} is not: `loka-trainer run` sets both"
            raise ValueError(msg)
        return cls(
            prefix=prefix,
            keep=int(env.get(ENV_CHECKPOINT_KEEP, "3")),
            writer=Writer.from_env(writer),
            run_uid=env.get(ENV_RUN_UID) or None,
        )


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
