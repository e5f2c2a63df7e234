"""Semantic checks the CRD schema cannot express, run before anything is launched.

The heaviest one composes the run's rendered verl arguments (with the spec's verlOverrides
last) against verl's packaged Hydra config (ppo_trainer for RL, sft_trainer_engine for SFT),
through the same renderer the trainer uses.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from loka_api import Engine, TrainingRunSpec
from loka_api.render import (
    StagedPaths,
    VerlConfigError,
    VerlNotInstalledError,
    compose_verl_config,
    render_verl_overrides,
    verl_config_name,
)
from loka_operator.status import Problem

log = logging.getLogger(__name__)

# Composition only checks keys and types, so any stable identity will do (and keeps the cache warm).
_PLACEHOLDER_RUN = "validation"
_PLACEHOLDER_NAMESPACE = "validation"


def _check_batch_shape(spec: TrainingRunSpec) -> Problem | None:
    training, resources = spec.training, spec.resources
    gpus = resources.workers * resources.gpus_per_worker
    mini = training.mini_batch_size or training.batch_size
    rl = spec.algorithm.is_rl
    if rl and spec.engine == Engine.VERL and gpus > 0 and (mini * training.samples_per_prompt) % gpus != 0:
        return Problem(
            "InvalidBatchShape",
            f"spec.training.miniBatchSize ({mini}) * samplesPerPrompt ({training.samples_per_prompt}) = "
            f"{mini * training.samples_per_prompt} trajectories cannot be split evenly over {gpus} GPUs "
            "(resources.workers * resources.gpusPerWorker); choose a multiple",
        )
    return None


def _check_verl_overrides(spec: TrainingRunSpec) -> Problem | None:
    if spec.engine != Engine.VERL:
        if spec.verl_overrides:
            return Problem(
                "InvalidVerlOverrides",
                f"spec.verlOverrides is only used by engine verl; engine is {spec.engine.value!r}: remove it",
            )
        return None
    overrides = render_verl_overrides(
        spec, run_name=_PLACEHOLDER_RUN, namespace=_PLACEHOLDER_NAMESPACE, paths=StagedPaths.placeholder()
    )
    try:
        compose_verl_config(overrides, config_name=verl_config_name(spec))
    except VerlConfigError as error:
        return Problem("InvalidVerlOverrides", f"spec.verlOverrides: {error}")
    except VerlNotInstalledError as error:
        # An operator image without verl's config cannot check overrides; say so rather than reject runs.
        log.warning("verlOverrides not checked: %s", error)
    return None


def validate_spec(spec: TrainingRunSpec) -> Problem | None:
    """The first problem found, or None. Blocking (composition takes ~1 s cold): call it in a thread."""
    return _check_batch_shape(spec) or _check_verl_overrides(spec)


@dataclass
class Validations:
    """Each (uid, generation) of a run is validated once, before it launches, never again after.

    A run that launched was valid by the rules of the operator that launched it; re-checking it after an upgrade
    (stricter checks, a newer verl config) would fail a running run and lift its immutability rule. Composition
    is CPU-bound (~1 s cold): it runs in a thread, and its answer is kept.
    """

    _results: dict[str, tuple[str, int, Problem | None]] = field(default_factory=dict)

    async def check(self, key: str, uid: str, generation: int, spec: TrainingRunSpec) -> Problem | None:
        known = self._results.get(key)
        if known is not None and known[:2] == (uid, generation):
            return known[2]
        problem = await asyncio.to_thread(validate_spec, spec)
        self._results[key] = (uid, generation, problem)
        return problem

    def forget(self, key: str) -> None:
        self._results.pop(key, None)
