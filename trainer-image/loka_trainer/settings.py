"""Environment the trainer runs with: what the operator injects, and what the runner forwards to verl's actors.

Secrets (AWS keys, WANDB_API_KEY, HF_TOKEN, RAY_AUTH_TOKEN) only ever arrive through the pod's environment
(secretKeyRef); they are never put on a command line or into Ray's runtime_env, which verl prints. Whatever the
trainer and verl print goes through `RedactingWriter`: an error that quotes a secret (a reward function's, a
library's) reaches the log, Ray's job message, KubeRay's RayJob status and the run's status without it.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from loka_api.contract import (
    ENV_CHECKPOINT_KEEP,
    ENV_CHECKPOINT_PREFIX,
    ENV_CHECKPOINT_WRITER,
    ENV_RUN_UID,
    ENV_SECRET_VARIABLES,
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
    declared = [n for n in env.get(ENV_SECRET_VARIABLES, "").split(",") if n]
    for name in sorted({*SECRET_ENV, *declared}):
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name}>")
    return text


class RedactingWriter(io.TextIOBase):
    """A text stream that holds each line back until it ends, then writes it with every secret value replaced
    (a value is never split across two writes of the target)."""

    # A line longer than this (a progress bar without newlines) goes out in pieces.
    MAX_PENDING = 1 << 16

    def __init__(self, target: TextIO, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.target = target
        self._environ = dict(os.environ if environ is None else environ)
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self.target.write(redact(complete + "\n", self._environ))
        if len(self._pending) > self.MAX_PENDING:
            self.target.write(redact(self._pending, self._environ))
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        if self._pending:
            self.target.write(redact(self._pending, self._environ))
            self._pending = ""
        self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.target.encoding


def redact_process_output() -> None:
    """From here on, everything this process prints (logs, tracebacks, warnings) is redacted."""
    import atexit

    if not isinstance(sys.stdout, RedactingWriter):
        sys.stdout = RedactingWriter(sys.stdout)
        atexit.register(sys.stdout.close)
    if not isinstance(sys.stderr, RedactingWriter):
        sys.stderr = RedactingWriter(sys.stderr)
        atexit.register(sys.stderr.close)
