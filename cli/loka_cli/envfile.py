"""Settings from a `.env` file and the environment: the file wins for what it names, the environment fills in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from loka_cli.errors import usage

DEFAULT_ENV_FILE = Path(".env")


def load_env(path: Path | None) -> dict[str, str]:
    """The environment overlaid with ``path`` (``.env`` in the current folder when it exists and none is named)."""
    values = dict(os.environ)
    chosen = path if path is not None else (DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.is_file() else None)
    if chosen is None:
        return values
    if not chosen.is_file():
        raise usage(f"--env-file: {chosen} does not exist", "name a .env file, or leave the flag out")
    from dotenv import dotenv_values

    values.update({key: value for key, value in dotenv_values(chosen).items() if value is not None})
    return values


def first(env: Mapping[str, str], *names: str) -> str | None:
    """The first non-empty value among ``names``."""
    return next((env[name] for name in names if env.get(name)), None)
