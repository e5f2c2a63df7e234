"""A reward as a weighted sum of named components, and each component's per-step figures.

A run's rubric is a list of components, each with a name (how it is logged), a kind (what it measures) and a
weight. The default is the one tool-use agents are trained with: the environment's own evaluation 0.8, tool
execution 0.1, format compliance 0.1. A component kind is registered once (``register_component``); a judge or
a reward model is one more kind.

``compute_score`` is verl's reward function (``reward.custom_reward_function``, async): it returns ``score`` and
every component's value under the same keys for every sample, whatever happened (an environment error, a judge
timeout), because verl builds a batch's extra-info columns from its first sample. The TRL engine calls the same
rubric. ``component_stats`` reduces a step's results to ``reward/<name>/{mean,std,min,max}``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import math
import os
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from loka_api.contract import reward_api_key_env, reward_rubric_env
from loka_api.models import JudgeSettings, RewardModelSettings
from loka_trainer.agents.episode import EpisodeStats, episode_of
from loka_trainer.rewards import judge, reward_model
from loka_trainer.rewards.judge import COMPONENT_SUFFIXES as JUDGE_SUFFIXES

# The key of the total in a result; verl requires it.
SCORE_KEY = "score"
# 1.0 when the environment failed for this sample (its score is then 0: the `zero` failure policy).
ENV_ERROR_KEY = "env_error"
RESERVED_KEYS = frozenset({SCORE_KEY, ENV_ERROR_KEY})
METRIC_PREFIX = "reward/"


@dataclass(frozen=True)
class RewardSample:
    """One trajectory to score, as verl's reward manager hands it over."""

    data_source: str
    solution: str
    ground_truth: str | None = None
    extra_info: Mapping[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def episode(self) -> EpisodeStats | None:
        """What the episode in the environment did (None when the trajectory ran none)."""
        return episode_of(self.extra_info)


@dataclass(frozen=True)
class ComponentScore:
    """A component's value, and the figures it always adds beside it (its ``extra_keys``)."""

    value: float
    extras: Mapping[str, float] = field(default_factory=dict)


class RewardComponent(ABC):
    """A named, weighted part of the reward. Subclasses set ``kind`` and implement ``score``.

    ``extra_keys`` are figures the component reports beside its value (a judge's ``ok`` and latency); they are
    logged as ``<name>_<key>`` and must be present in every result, so ``score`` fills each one every time.
    """

    kind: ClassVar[str]
    extra_keys: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[str, ...]] = ()  # the config keys besides name, kind and weight it accepts

    def __init__(self, name: str, weight: float, **options: Any) -> None:
        self.name = name
        self.weight = weight

    @abstractmethod
    async def score(self, sample: RewardSample) -> ComponentScore: ...

    def result_keys(self) -> tuple[str, ...]:
        return (self.name, *(f"{self.name}_{key}" for key in self.extra_keys))

    async def close(self) -> None:  # noqa: B027 (most components hold nothing)
        """Release what the component holds (HTTP sessions); called when the rubric is dropped."""


COMPONENT_KINDS: dict[str, type[RewardComponent]] = {}
ComponentT = TypeVar("ComponentT", bound=type[RewardComponent])


def register_component(component: ComponentT) -> ComponentT:
    """Make a component kind available to rubrics by its ``kind``."""
    if component.kind in COMPONENT_KINDS and COMPONENT_KINDS[component.kind] is not component:
        msg = f"reward component kind {component.kind!r} is registered twice"
        raise ValueError(msg)
    COMPONENT_KINDS[component.kind] = component
    return component


@register_component
class TaskCompletion(RewardComponent):
    """The environment's evaluation of the episode (its evaluate tool's reward)."""

    kind = "environment"

    async def score(self, sample: RewardSample) -> ComponentScore:
        episode = sample.episode
        return ComponentScore(episode.task_completion if episode and not episode.env_error else 0.0)


@register_component
class ToolExecution(RewardComponent):
    """Tool calls that ran without error, among those that parsed (0 when the model called no tool)."""

    kind = "toolExecution"

    async def score(self, sample: RewardSample) -> ComponentScore:
        episode = sample.episode
        return ComponentScore(episode.tool_success_rate if episode else 0.0)


@register_component
class FormatCompliance(RewardComponent):
    """1 - malformed tool calls / tool calls, when the episode ended with an answer; 0 when it never answered."""

    kind = "formatCompliance"

    async def score(self, sample: RewardSample) -> ComponentScore:
        episode = sample.episode
        return ComponentScore(episode.format_compliance if episode else 0.0)


@register_component
class FunctionComponent(RewardComponent):
    """A verl-style ``compute_score(data_source, solution_str, ground_truth, extra_info)`` (sync or async); a dict
    result contributes its ``score``.
    """

    kind = "function"
    options = ("function",)

    def __init__(self, name: str, weight: float, *, function: str = "", **options: Any) -> None:
        super().__init__(name, weight)
        self.function = load_function(function, field="function")

    async def score(self, sample: RewardSample) -> ComponentScore:
        result = self.function(sample.data_source, sample.solution, sample.ground_truth, dict(sample.extra_info))
        if inspect.isawaitable(result):
            result = await result
        value = result[SCORE_KEY] if isinstance(result, Mapping) else result
        return ComponentScore(float(value))


@register_component
class JudgeComponent(RewardComponent):
    """An LLM judge's verdict in [0, 1] (``loka_trainer.rewards.judge``): slow or down, it scores its failure score
    within its timeout and says so in ``<name>_ok`` / ``<name>_error``; the step's judge figures follow from them.
    """

    kind = "judge"
    extra_keys = tuple(suffix.removeprefix("_") for suffix in JUDGE_SUFFIXES if suffix)
    options = ("judge",)

    def __init__(self, name: str, weight: float, **options: Any) -> None:
        super().__init__(name, weight)
        settings = JudgeSettings.model_validate(options.get("judge") or {})
        self.config = judge.JudgeConfig.from_settings(
            settings, name=name, rubric=_rubric(name, settings), api_key_env=reward_api_key_env(name)
        )

    async def score(self, sample: RewardSample) -> ComponentScore:
        verdict = await judge.client_for(self.config).judge(sample.extra_info.get("prompt"), sample.solution)
        return _split(self.name, verdict.as_components(self.name))


@register_component
class RewardModelComponent(RewardComponent):
    """A served reward model's sigmoid(logit) (``loka_trainer.rewards.reward_model``), on the same terms as a judge."""

    kind = "rewardModel"
    extra_keys = tuple(suffix.removeprefix("_") for suffix in reward_model.RM_SUFFIXES if suffix)
    options = ("rewardModel",)

    def __init__(self, name: str, weight: float, **options: Any) -> None:
        super().__init__(name, weight)
        settings = RewardModelSettings.model_validate(options.get("rewardModel") or {})
        self.config = reward_model.RewardModelConfig.from_settings(
            settings, name=name, api_key_env=reward_api_key_env(name)
        )

    async def score(self, sample: RewardSample) -> ComponentScore:
        conversation = reward_model.conversation_of(sample.extra_info.get("prompt"), sample.solution)
        scored = await reward_model.client_for(self.config).score(conversation)
        return _split(self.name, scored.as_components(self.name))


def _rubric(name: str, settings: JudgeSettings) -> str:
    """The judge's rubric: its text, the ConfigMap key the operator gave the pods as a variable, or the default."""
    if settings.rubric is None:
        return judge.DEFAULT_RUBRIC
    if settings.rubric.text is not None:
        return settings.rubric.text
    variable = reward_rubric_env(name)
    text = os.environ.get(variable)
    if not text:
        ref = settings.rubric.config_map
        where = f"ConfigMap {ref.name} key {ref.key}" if ref is not None else "its ConfigMap"
        msg = f"reward.components[{name}].judge.rubric: {where} did not reach this pod as {variable}"
        raise ValueError(msg)
    return text


def _split(name: str, values: Mapping[str, float]) -> ComponentScore:
    """A component's value and extras from an endpoint's per-sample keys (``<name>``, ``<name>_<key>``)."""
    prefix = f"{name}_"
    return ComponentScore(values[name], {k.removeprefix(prefix): v for k, v in values.items() if k != name})


def load_function(reference: str, *, field: str) -> Callable[..., Any]:
    """``module.path:function`` imported; the error names the field and what is accepted."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        msg = f"{field}: {reference!r} is not module.path:function"
        raise ValueError(msg)
    try:
        loaded = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        msg = f"{field}: cannot import {reference!r} ({error}); expected module.path:function"
        raise ValueError(msg) from error
    if not callable(loaded):
        msg = f"{field}: {reference!r} is not callable"
        raise ValueError(msg)
    return loaded  # type: ignore[no-any-return]


# name, kind, weight: task completion 0.8, tool execution 0.1, format compliance 0.1.
DEFAULT_RUBRIC: tuple[dict[str, Any], ...] = (
    {"name": "task_completion", "kind": TaskCompletion.kind, "weight": 0.8},
    {"name": "tool_execution", "kind": ToolExecution.kind, "weight": 0.1},
    {"name": "format_compliance", "kind": FormatCompliance.kind, "weight": 0.1},
)


def component_from_config(config: Mapping[str, Any], index: int = 0) -> RewardComponent:
    """One component from ``{name, kind, weight, **options}``; errors name the field, the value and what fits."""
    where = f"reward.components[{index}]"
    name, kind, weight = config.get("name"), config.get("kind"), config.get("weight", 1.0)
    if not isinstance(name, str) or not name or name in RESERVED_KEYS:
        msg = f"{where}.name: {name!r} must be a non-empty string other than {sorted(RESERVED_KEYS)}"
        raise ValueError(msg)
    component = COMPONENT_KINDS.get(str(kind))
    if component is None:
        msg = f"{where}.kind: {kind!r} is not a reward component kind (accepted: {', '.join(sorted(COMPONENT_KINDS))})"
        raise ValueError(msg)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        msg = f"{where}.weight: {weight!r} must be a finite number"
        raise ValueError(msg)
    options = {key: value for key, value in config.items() if key not in {"name", "kind", "weight"}}
    unknown = sorted(set(options) - set(component.options))
    if unknown:
        accepted = ", ".join(component.options) or "none"
        msg = f"{where}: {', '.join(unknown)} not accepted by kind {kind!r} (its options: {accepted})"
        raise ValueError(msg)
    try:
        return component(name, float(weight), **options)
    except ValueError as error:
        raise ValueError(f"{where}.{error}") from error


class Rubric:
    """Named, weighted components; ``score`` returns the same keys for every sample."""

    def __init__(self, components: Sequence[RewardComponent]) -> None:
        if not components:
            msg = "reward.components: a rubric needs at least one component"
            raise ValueError(msg)
        names = [c.name for c in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            msg = f"reward.components: names must be unique; {', '.join(duplicates)} used more than once"
            raise ValueError(msg)
        self.components = tuple(components)

    @classmethod
    def from_config(cls, configs: Iterable[Mapping[str, Any]]) -> Rubric:
        return cls([component_from_config(config, index) for index, config in enumerate(configs)])

    @classmethod
    def default(cls) -> Rubric:
        return cls.from_config(DEFAULT_RUBRIC)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    def keys(self) -> tuple[str, ...]:
        """Every key of a result, in order: the total, each component's value and extras, the env error flag."""
        return (SCORE_KEY, *(key for c in self.components for key in c.result_keys()), ENV_ERROR_KEY)

    async def score(self, sample: RewardSample) -> dict[str, float]:
        scores = await asyncio.gather(*(c.score(sample) for c in self.components))
        episode = sample.episode
        env_error = bool(episode and episode.env_error)
        result: dict[str, float] = {SCORE_KEY: 0.0}
        total = 0.0
        for component, scored in zip(self.components, scores, strict=True):
            value = float(scored.value) if math.isfinite(scored.value) else 0.0
            result[component.name] = value
            for key in component.extra_keys:
                result[f"{component.name}_{key}"] = float(scored.extras.get(key, 0.0))
            total += component.weight * value
        # The `zero` failure policy: an episode whose environment failed scores nothing (and is counted).
        result[SCORE_KEY] = 0.0 if env_error else total
        result[ENV_ERROR_KEY] = 1.0 if env_error else 0.0
        return result

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.components))


@functools.lru_cache(maxsize=16)
def rubric_from_json(text: str | None) -> Rubric:
    """The rubric verl's reward_kwargs carry as JSON (parsed once per worker process); the default when unset."""
    if not text:
        return Rubric.default()
    configs = json.loads(text)
    if not isinstance(configs, list):
        msg = f"reward rubric: expected a JSON list of components, got {type(configs).__name__}"
        raise ValueError(msg)
    return Rubric.from_config(configs)


def rubric_to_json(configs: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(configs), separators=(",", ":"), sort_keys=True)


async def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | int | float | None = None,
    extra_info: Mapping[str, Any] | None = None,
    rubric: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's reward signature (async). ``rubric`` is the JSON list of components (``reward_kwargs``)."""
    del kwargs  # reward_router_address and the like, for components that need them
    sample = RewardSample(
        data_source=str(data_source or ""),
        solution=solution_str if isinstance(solution_str, str) else "",
        ground_truth=None if ground_truth is None else str(ground_truth),
        extra_info=extra_info or {},
    )
    return await rubric_from_json(rubric).score(sample)


def component_stats(
    results: Iterable[Mapping[str, float]], names: Iterable[str], prefix: str = METRIC_PREFIX
) -> dict[str, float]:
    """``reward/<name>/{mean,std,min,max}`` for the total (``reward/total``) and each named key, over one step's
    results. Keys missing from every result are left out.
    """
    rows = list(results)
    out: dict[str, float] = {}
    for key, label in ((SCORE_KEY, "total"), *((n, n) for n in names)):
        values = [float(r[key]) for r in rows if key in r and math.isfinite(float(r[key]))]
        if not values:
            continue
        out[f"{prefix}{label}/mean"] = statistics.fmean(values)
        out[f"{prefix}{label}/std"] = statistics.pstdev(values)
        out[f"{prefix}{label}/min"] = min(values)
        out[f"{prefix}{label}/max"] = max(values)
    return out
