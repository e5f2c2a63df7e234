"""The one renderer of verl arguments: a TrainingRun spec -> what the trainer launches (`VerlLaunch`).

The run's recipe (`loka_api.recipes`, by `spec.algorithm`) says which entry point and verl config, and renders
Loka's overrides; the user's verlOverrides come last. The trainer runs what this renders; the operator composes
the same overrides against verl's packaged Hydra config (without importing verl, which pulls in torch) to reject
unknown keys, and keys Loka owns, before anything is launched. It lives in the core so that both sides run the
same code.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loka_api.recipes import StagedPaths, VerlLaunch, recipe_for
from loka_api.recipes.base import (
    DEFAULT_CHECKPOINT_CALLBACK,
    RESUME_AUTO,
    RESUME_NEVER,
    VERL_FILE_LOGGER_ENV,
    hydra_string,
    override_key,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from loka_api.models import TrainingRunSpec

__all__ = [
    "DEFAULT_CHECKPOINT_CALLBACK",
    "RESUME_AUTO",
    "RESUME_NEVER",
    "VERL_FILE_LOGGER_ENV",
    "StagedPaths",
    "VerlConfigError",
    "VerlLaunch",
    "VerlNotInstalledError",
    "compose_verl_config",
    "hydra_string",
    "render_launch",
    "render_verl_overrides",
    "verl_config_dir",
    "verl_config_name",
]

# A config every verl wheel ships: how verl's config folder is found.
_MARKER_CONFIG = "ppo_trainer"


def render_launch(
    spec: TrainingRunSpec,
    *,
    run_name: str,
    namespace: str,
    paths: StagedPaths,
    runtime_env: Mapping[str, str] | None = None,
) -> VerlLaunch:
    """What the trainer runs for ``spec``: its recipe's entry point and overrides, the user's verlOverrides last,
    and ``runtime_env`` (the variables verl's processes need; never a secret) where the recipe passes it.
    """
    return recipe_for(spec.algorithm).render(
        spec, run_name=run_name, namespace=namespace, paths=paths, runtime_env=runtime_env
    )


def render_verl_overrides(spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
    """Hydra `key=value` overrides for the run's verl trainer; the spec's verlOverrides come last and win."""
    return render_launch(spec, run_name=run_name, namespace=namespace, paths=paths).arguments


def verl_config_name(spec: TrainingRunSpec) -> str:
    """The verl Hydra config the run's overrides compose against."""
    name = recipe_for(spec.algorithm).config_name
    if name is None:
        msg = f"spec.engine: algorithm {spec.algorithm!r} has no verl trainer (use engine trl)"
        raise ValueError(msg)
    return name


# ------------------------------------------------------------------------------------- composition


class VerlConfigError(ValueError):
    """An override does not fit verl's Hydra config. `key` names the offending config key when known."""

    def __init__(self, message: str, *, key: str | None = None, override: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.override = override


class VerlNotInstalledError(RuntimeError):
    """verl's packaged config is not available (install `verl==0.9.1 --no-deps`)."""


def verl_config_dir() -> Path:
    """verl/trainer/config inside the installed wheel, found without importing verl (it imports torch)."""
    spec = importlib.util.find_spec("verl")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "trainer" / "config"
        if (candidate / f"{_MARKER_CONFIG}.yaml").is_file():
            return candidate
    raise VerlNotInstalledError(
        "verl's packaged Hydra config (verl/trainer/config/ppo_trainer.yaml) was not found; "
        "install it with `pip install --no-deps verl==0.9.1`"
    )


# Hydra's GlobalHydra is process-wide state: one composition at a time.
_compose_lock = threading.Lock()

_OVERRIDE_KEY = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[^=@]+?)(@[^=]*)?=(?P<value>.*)$", re.S)


def _last_with_key(overrides: Sequence[str], key: str | None) -> str | None:
    # The last override of a key wins in Hydra, and the user's verlOverrides come last.
    return next((o for o in reversed(overrides) if override_key(o) == key), None)


def _explain(error: Exception, overrides: Sequence[str], config_name: str) -> VerlConfigError:
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    quoted = re.search(r"'([^']+)'", text)
    key = quoted.group(1) if quoted else None
    override = _last_with_key(overrides, key) or key
    if "Could not override" in text or "not in struct" in text:
        message = (
            f"unknown verl config key {key!r} (in {override!r}): it is not in verl's {config_name} config; "
            f"check the spelling, or add a new key with '+{key}=...'"
        )
    elif "Could not append" in text:
        message = f"verl config key {key!r} already exists (in {override!r}); drop the leading '+' to override it"
    elif "Could not delete" in text:
        message = f"cannot delete verl config key {key!r} (in {override!r}): it is not in verl's {config_name} config"
    else:
        message = f"invalid verl override {override!r}: {first_line}"
    return VerlConfigError(message, key=key, override=override)


def _parse_each(overrides: Sequence[str]) -> None:
    """Name the override Hydra cannot parse (its own message does not say which one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as error:
            reason = str(error).strip().splitlines()[0]
            raise VerlConfigError(
                f"cannot parse verl override {override!r}: {reason} (expected key=value in Hydra override syntax)",
                key=override_key(override),
                override=override,
            ) from None


@functools.lru_cache(maxsize=256)
def _compose_cached(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _parse_each(overrides)
    config_dir = verl_config_dir()
    with _compose_lock, initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            return compose(config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as error:
            raise _explain(error, overrides, config_name) from None


def _select(config: DictConfig, key: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.select(config, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation that cannot resolve offline
        return None


def _check_types(config: DictConfig, overrides: Sequence[str], config_name: str) -> None:
    """Catch what composition lets through: a number or boolean key given a word (e.g. `rollout.n=abc`)."""
    defaults = _compose_cached(config_name, ())
    winners = {override_key(o): o for o in overrides}
    for key, override in winners.items():
        match = _OVERRIDE_KEY.match(override)
        if not match or match.group("prefix"):
            continue
        default = _select(defaults, key)
        value = _select(config, key)
        if default is None or value is None or isinstance(value, type(default)):
            continue
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if numeric and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        raise VerlConfigError(
            f"verl config key {key!r} expects a {type(default).__name__} (default {default!r}), "
            f"got {value!r} (in {override!r})",
            key=key,
            override=override,
        )


def compose_verl_config(overrides: Sequence[str], *, config_name: str = _MARKER_CONFIG) -> DictConfig:
    """Compose overrides against one of verl's packaged configs (ppo_trainer by default, sft_trainer_engine for
    SFT); raise VerlConfigError naming a bad key.
    """
    config = _compose_cached(config_name, tuple(overrides))
    _check_types(config, overrides, config_name)
    return config
