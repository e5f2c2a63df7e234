"""A reward model as a reward component: a served ``*ForSequenceClassification`` checkpoint (an ``algorithm: rm``
run's), asked over HTTP, so it never shares the policy's GPUs.

It speaks the pooling API vLLM serves such a model with (``vllm serve <rm> --runner pooling``): ``POST
<endpoint>/classify`` with ``{"model", "messages"}`` (or ``"input"``: the conversation flattened, for servers without
chat support) and ``"use_activation": false``, and reads the raw logit from ``data[0].probs[-1]`` (as verl's own
discriminative RM client does). ``loka_trainer.rm_server`` serves the same API on CPU for tiny models.

The component's value is ``sigmoid(logit)`` in [0, 1]; it follows the endpoint policy of every reward component
(``loka_trainer.rewards.endpoint``) and returns the same keys whatever happens: ``rm``, ``rm_ok``, ``rm_latency_s``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from loka_api.models import RewardModelSettings
from loka_trainer.rewards.endpoint import Endpoint, EndpointClient, flatten

RM_SUFFIXES = ("", "_ok", "_latency_s")


@dataclass(frozen=True)
class RewardModelConfig:
    endpoint: str  # the server's base URL (vLLM: http://rm-svc:8000)
    model: str = "rm"
    name: str = "rm"
    input_format: str = "messages"  # messages (chat) | text (flattened role: content lines)
    max_concurrency: int = 16
    timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.5
    failure_score: float = 0.0
    api_key_env: str | None = None

    @classmethod
    def from_settings(cls, settings: RewardModelSettings, *, name: str, api_key_env: str | None) -> RewardModelConfig:
        """From the spec's reward model settings (a run's rewardModel component; a model served for the run
        (fromRun) has its Service's address as its endpoint, `loka_api.reward_models.with_served_endpoints`)."""
        if settings.endpoint is None:
            msg = f"reward.components[{name}].rewardModel: no endpoint (a fromRun model is called at its Service)"
            raise ValueError(msg)
        return cls(
            endpoint=settings.endpoint,
            model=settings.model,
            name=name,
            input_format=settings.input_format,
            max_concurrency=settings.max_concurrency,
            timeout_s=settings.timeout_seconds,
            retries=settings.retries,
            failure_score=settings.failure_score,
            api_key_env=api_key_env if settings.api_key is not None else None,
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RewardModelConfig:
        known = {f.name for f in fields(cls)}
        snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in values.items()}
        unknown = sorted(set(snake) - known)
        if unknown:
            msg = f"rewardModel: unknown setting(s) {', '.join(unknown)} (accepted: {', '.join(sorted(known))})"
            raise ValueError(msg)
        config = cls(**snake)
        if not config.endpoint.startswith(("http://", "https://")):
            msg = f"rewardModel.endpoint: {config.endpoint!r} is not an http(s) URL (e.g. http://rm:8000)"
            raise ValueError(msg)
        if config.input_format not in {"messages", "text"}:
            msg = f"rewardModel.inputFormat: {config.input_format!r} is not messages or text"
            raise ValueError(msg)
        return config

    def keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}{suffix}" for suffix in RM_SUFFIXES)


@dataclass(frozen=True)
class RewardModelScore:
    score: float  # sigmoid of the logit; the failure score when not ok
    ok: bool
    logit: float | None
    error: str | None
    latency_s: float

    def as_components(self, name: str) -> dict[str, float]:
        return {name: self.score, f"{name}_ok": 1.0 if self.ok else 0.0, f"{name}_latency_s": self.latency_s}


class RewardModelClient(EndpointClient):
    def __init__(self, config: RewardModelConfig) -> None:
        super().__init__(
            Endpoint(
                url=config.endpoint,
                max_concurrency=config.max_concurrency,
                retries=config.retries,
                backoff_s=config.backoff_s,
                api_key_env=config.api_key_env,
            )
        )
        self.config = config

    async def score(self, messages: Sequence[Mapping[str, Any]]) -> RewardModelScore:
        started = time.monotonic()
        body: dict[str, Any] = {"model": self.config.model, "use_activation": False}
        if self.config.input_format == "messages":
            body["messages"] = [dict(m) for m in messages]
        else:
            body["input"] = [flatten(messages)]
        reply = await self.post("/classify", body, started + self.config.timeout_s)
        latency = time.monotonic() - started
        logit = _logit(reply.payload) if reply.error is None else None
        if logit is None:
            return RewardModelScore(self.config.failure_score, False, None, reply.error or "unparseable", latency)
        return RewardModelScore(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit)))), True, logit, None, latency)


def _logit(payload: Any) -> float | None:
    try:
        value = float(payload["data"][-1]["probs"][-1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


_CLIENTS: dict[RewardModelConfig, RewardModelClient] = {}


def client_for(config: RewardModelConfig) -> RewardModelClient:
    if config not in _CLIENTS:
        _CLIENTS[config] = RewardModelClient(config)
    return _CLIENTS[config]


def conversation_of(prompt: Any, response: str) -> list[dict[str, Any]]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt or []]
    return [*turns, {"role": "assistant", "content": response}]


async def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    *,
    reward_model: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's (async) reward signature with a served reward model as the whole reward; its settings come as the
    reward kwarg ``reward_model``. The prompt is ``extra_info["prompt"]`` when the data carries it.
    """
    del data_source, ground_truth, kwargs
    if reward_model is None:
        msg = "loka_trainer.rewards.reward_model:compute_score needs the reward kwarg `reward_model` (endpoint, ...)"
        raise ValueError(msg)
    config = RewardModelConfig.from_mapping(reward_model)
    result = await client_for(config).score(conversation_of((extra_info or {}).get("prompt"), solution_str))
    return {"score": result.score, **result.as_components(config.name)}
