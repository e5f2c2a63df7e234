"""Semantic checks the CRD schema cannot express, run before anything is launched.

The run's recipe (loka_api.recipes, by spec.algorithm) checks what is particular to its algorithm. The heaviest
check composes the run's rendered verl arguments (with the spec's verlOverrides last) against the verl config the
recipe names, through the same renderer the trainer uses.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from loka_api import Engine, TrainingRunSpec
from loka_api.environments import environment_problems
from loka_api.recipes import Recipe, recipe_for
from loka_api.render import StagedPaths, VerlConfigError, VerlNotInstalledError, compose_verl_config, render_launch
from loka_api.reward_models import served_components
from loka_operator.status import Problem

log = logging.getLogger(__name__)

# Composition only checks keys and types, so any stable identity will do (and keeps the cache warm).
_PLACEHOLDER_RUN = "validation"
_PLACEHOLDER_NAMESPACE = "validation"


def _check_recipe(spec: TrainingRunSpec, recipe: Recipe) -> Problem | None:
    if spec.engine == Engine.TRL and recipe.trl_trainer is None:
        return Problem(
            "InvalidEngine", f"spec.engine: algorithm {spec.algorithm!r} has no trl trainer; use engine verl"
        )
    if spec.engine == Engine.VERL and recipe.entrypoint is None:
        return Problem(
            "InvalidEngine", f"spec.engine: algorithm {spec.algorithm!r} has no verl trainer; use engine trl"
        )
    problem = recipe.check(spec)
    return Problem(problem.reason, problem.message) if problem is not None else None


def _check_verl_overrides(spec: TrainingRunSpec, recipe: Recipe) -> Problem | None:
    if spec.engine != Engine.VERL:
        if spec.verl_overrides:
            return Problem(
                "InvalidVerlOverrides",
                f"spec.verlOverrides is only used by engine verl; engine is {spec.engine.value!r}: remove it",
            )
        return None
    owned = recipe.owned_key_problem(spec.verl_overrides)
    if owned is not None:
        return Problem(owned.reason, owned.message)
    launch = render_launch(
        spec, run_name=_PLACEHOLDER_RUN, namespace=_PLACEHOLDER_NAMESPACE, paths=StagedPaths.placeholder()
    )
    try:
        compose_verl_config(launch.arguments, config_name=launch.config_name)
    except VerlConfigError as error:
        return Problem("InvalidVerlOverrides", f"spec.verlOverrides: {error}")
    except VerlNotInstalledError as error:
        # An operator image without verl's config cannot check overrides; say so rather than reject runs.
        log.warning("verlOverrides not checked: %s", error)
    return None


# Kueue's limit of 8 pod sets per Workload, less the head, the workers and the submitter (K8sJobMode).
MAX_QUEUED_IMAGE_SERVERS = 5


def _check_environment(spec: TrainingRunSpec) -> Problem | None:
    """Headers hold no literal credential and reference only declared secret variables; lifecycle tools stay hidden."""
    if spec.environment is None:
        return None
    problems = environment_problems(spec.environment)
    brought = sum(server.run is not None for server in spec.environment.servers)
    if spec.queue is not None and brought > MAX_QUEUED_IMAGE_SERVERS:
        problems.append(
            f"spec.environment.servers: {brought} given as run (an image); a queued run may bring at most "
            f"{MAX_QUEUED_IMAGE_SERVERS} (Kueue's Workload holds 8 pod sets: the Ray head, workers, the submitter, "
            "one per server)"
        )
    return Problem("InvalidEnvironment", "; ".join(problems)) if problems else None


def _check_served_reward_models(spec: TrainingRunSpec) -> Problem | None:
    """The reward models the operator serves share the Workload's pod sets with the environment servers."""
    served = len(served_components(spec))
    servers = sum(s.run is not None for s in spec.environment.servers) if spec.environment is not None else 0
    if spec.queue is None or served == 0 or served + servers <= MAX_QUEUED_IMAGE_SERVERS:
        return None
    return Problem(
        "InvalidRewardModels",
        f"spec.reward.components: {served} reward models served (rewardModel.fromRun) and {servers} environment "
        f"servers given as run; a queued run may bring at most {MAX_QUEUED_IMAGE_SERVERS} in all (Kueue's Workload "
        "holds 8 pod sets: the Ray head, workers, the submitter, one per served model or server)",
    )


def validate_spec(spec: TrainingRunSpec) -> Problem | None:
    """The first problem found, or None. Blocking (composition takes ~1 s cold): call it in a thread."""
    recipe = recipe_for(spec.algorithm)
    return (
        _check_recipe(spec, recipe)
        or _check_environment(spec)
        or _check_served_reward_models(spec)
        or _check_verl_overrides(spec, recipe)
    )


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
