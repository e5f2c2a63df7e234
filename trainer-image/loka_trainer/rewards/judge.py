"""An LLM judge as a reward component: any OpenAI-compatible chat endpoint (vLLM, a gateway, a hosted API).

A judge that is slow or down slows or zeroes its component; it never stalls or crashes the run:

- every verdict is bounded by ``timeout_s`` in all (retries included), and at most ``max_concurrency`` requests
  are in flight per process (per event loop);
- 429 and 5xx (and a dropped connection) are retried with jittered exponential backoff, honouring
  ``Retry-After``; any other 4xx is not (a bad key or a bad request does not heal);
- a verdict that fails scores ``failure_score`` and says why.

Each sample's figures come back under the same keys whatever happened (verl takes a batch's reward keys from its
first sample), and :func:`judge_step_metrics` reduces a step's verdicts to the figures logged every step.

The API key travels as the name of an environment variable (``api_key_env``); the value is read in the pod, at call
time, and never logged.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from loka_api.models import JudgeSettings
from loka_trainer.rewards.endpoint import Endpoint, EndpointClient, flatten

# The judge is told to end with `Score: N`, N from 0 to SCORE_SCALE; scores are reported in [0, 1].
SCORE_SCALE = 10
SCORE_INSTRUCTION = f"End your reply with a line `Score: N`, where N is an integer from 0 to {SCORE_SCALE}."
_SCORE_LINE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
MAX_RAW_CHARS = 2000
DEFAULT_RUBRIC = (
    "You are a strict grader. Judge how well the response answers the prompt: correct, complete and concise."
)
# The per-sample keys of a judge component named `judge`: judge, judge_ok, judge_error, judge_latency_s, judge_tokens.
COMPONENT_SUFFIXES = ("", "_ok", "_error", "_latency_s", "_tokens")


@dataclass(frozen=True)
class JudgeConfig:
    """One judge: where it is, what it is asked, and how much it may cost the run."""

    endpoint: str  # OpenAI base URL, e.g. http://vllm-judge:8000/v1
    model: str
    rubric: str = DEFAULT_RUBRIC
    name: str = "judge"  # the component's name: its keys are <name>, <name>_ok, ...
    api_key_env: str | None = None  # the environment variable holding the API key (never the key itself)
    samples: int = 1  # verdicts averaged per response
    temperature: float = 0.0
    max_tokens: int = 256
    max_concurrency: int = 8
    timeout_s: float = 60.0  # per verdict, retries included
    retries: int = 3
    backoff_s: float = 0.5
    failure_score: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> JudgeConfig:
        """From reward kwargs (camelCase or snake_case); unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in values.items()}
        unknown = sorted(set(snake) - known)
        if unknown:
            msg = f"judge: unknown setting(s) {', '.join(unknown)} (accepted: {', '.join(sorted(known))})"
            raise ValueError(msg)
        config = cls(**snake)
        config.check()
        return config

    @classmethod
    def from_settings(cls, settings: JudgeSettings, *, name: str, rubric: str, api_key_env: str | None) -> JudgeConfig:
        """From the spec's judge settings (a run's judge component, an Evaluation's judge)."""
        return cls(
            endpoint=settings.endpoint,
            model=settings.model,
            rubric=rubric,
            name=name,
            api_key_env=api_key_env if settings.api_key is not None else None,
            samples=settings.samples,
            temperature=settings.temperature,
            max_concurrency=settings.max_concurrency,
            timeout_s=settings.timeout_seconds,
            retries=settings.retries,
            failure_score=settings.failure_score,
        )

    def check(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            msg = f"judge.endpoint: {self.endpoint!r} is not an http(s) URL (e.g. http://judge:8000/v1)"
            raise ValueError(msg)
        for name in ("samples", "max_concurrency", "max_tokens"):
            if int(getattr(self, name)) < 1:
                msg = f"judge.{name}: {getattr(self, name)!r} must be at least 1"
                raise ValueError(msg)
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            msg = "judge: timeout_s must be positive, retries and backoff_s not negative"
            raise ValueError(msg)

    def keys(self) -> tuple[str, ...]:
        """The per-sample keys of this component, the same for every sample."""
        return tuple(f"{self.name}{suffix}" for suffix in COMPONENT_SUFFIXES)


@dataclass(frozen=True)
class Verdict:
    """A judge's answer for one response (averaged over ``samples``), or why there is none."""

    score: float  # in [0, 1]; the failure score when not ok
    ok: bool  # at least one sample answered with a parseable score
    answered: bool  # at least one sample came back (HTTP 200 with a message), parseable or not
    error: str | None  # why no score: "timeout", "http 500", "http 401", "connection", "unparseable"
    latency_s: float
    tokens: int = 0
    attempts: int = 0
    raw: str = ""  # the (first) answer's text, cut to MAX_RAW_CHARS

    def as_components(self, name: str) -> dict[str, float]:
        return {
            name: self.score,
            f"{name}_ok": 1.0 if self.ok else 0.0,
            f"{name}_error": 0.0 if self.answered else 1.0,
            f"{name}_latency_s": self.latency_s,
            f"{name}_tokens": float(self.tokens),
        }


def parse_score(text: str) -> float | None:
    """The score in a judge's answer, in [0, 1]: ``{"score": N}`` or the last ``Score: N`` line; None if absent."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped).get("score")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return min(1.0, max(0.0, float(value) / SCORE_SCALE))
    found = _SCORE_LINE.findall(text)
    if not found:
        return None
    return min(1.0, max(0.0, float(found[-1]) / SCORE_SCALE))


def judge_messages(
    rubric: str, prompt: str | Sequence[Mapping[str, Any]] | None, response: str
) -> list[dict[str, str]]:
    """What the judge is asked: the rubric as the system turn, the conversation and the response to judge."""
    if prompt is None:
        conversation = ""
    elif isinstance(prompt, str):
        conversation = prompt
    else:
        conversation = flatten(prompt)
    user = f"<prompt>\n{conversation}\n</prompt>\n<response>{response}</response>\n\n{SCORE_INSTRUCTION}"
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


class JudgeClient(EndpointClient):
    """Asks one judge; safe to share across the coroutines of one event loop (and across loops)."""

    def __init__(self, config: JudgeConfig) -> None:
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

    async def judge(self, prompt: str | Sequence[Mapping[str, Any]] | None, response: str) -> Verdict:
        """One verdict, within ``timeout_s``; never raises for the judge's failures."""
        started = time.monotonic()
        deadline = started + self.config.timeout_s
        messages = judge_messages(self.config.rubric, prompt, response)
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        replies = await asyncio.gather(
            *(self.post("/chat/completions", body, deadline) for _ in range(self.config.samples))
        )
        latency = time.monotonic() - started
        texts = [_answer_text(reply.payload) if reply.error is None else None for reply in replies]
        answered = [text for text in texts if text is not None]
        scores = [score for text in answered if (score := parse_score(text)) is not None]
        tokens = sum(_tokens(reply.payload) for reply in replies if reply.error is None)
        attempts = sum(reply.attempts for reply in replies)
        raw = (answered[0] if answered else "")[:MAX_RAW_CHARS]
        if scores:
            return Verdict(sum(scores) / len(scores), True, True, None, latency, tokens, attempts, raw)
        errors = [reply.error for reply in replies if reply.error]
        error = "unparseable" if answered or not errors else errors[0]
        return Verdict(self.config.failure_score, False, bool(answered), error, latency, tokens, attempts, raw)


def _answer_text(payload: Any) -> str | None:
    try:
        return str(payload["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return None


def _tokens(payload: Any) -> int:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return int((usage or {}).get("total_tokens") or 0)


def judge_step_metrics(verdicts: Iterable[Verdict], *, name: str = "judge") -> dict[str, float]:
    """A step's figures for one judge: ``<name>/{parse_rate,error_rate,latency_s/mean,latency_s/max,tokens}``.

    ``parse_rate``: the share of answers that held a score; ``error_rate``: the share of samples the judge did not
    answer at all (timeout, refused, an HTTP error after the retries).
    """
    batch = list(verdicts)
    if not batch:
        return {}
    answered = [v for v in batch if v.answered]
    return {
        f"{name}/parse_rate": sum(v.ok for v in answered) / len(answered) if answered else 0.0,
        f"{name}/error_rate": sum(not v.answered for v in batch) / len(batch),
        f"{name}/latency_s/mean": sum(v.latency_s for v in batch) / len(batch),
        f"{name}/latency_s/max": max(v.latency_s for v in batch),
        f"{name}/tokens": float(sum(v.tokens for v in batch)),
    }


def components_step_metrics(
    rows: Iterable[Mapping[str, Any]], *, name: str = "judge", prefix: str | None = None
) -> dict[str, float]:
    """:func:`judge_step_metrics` from per-sample reward dicts (what verl keeps as ``reward_extra_info``)."""
    verdicts = [
        Verdict(
            score=float(row[name]),
            ok=bool(row[f"{name}_ok"]),
            answered=not row[f"{name}_error"],
            error=None if row[f"{name}_ok"] else "error",
            latency_s=float(row[f"{name}_latency_s"]),
            tokens=int(row[f"{name}_tokens"]),
        )
        for row in rows
        if name in row
    ]
    return judge_step_metrics(verdicts, name=prefix or name)


# One client per judge configuration and process: its semaphore is the per-process concurrency cap.
_CLIENTS: dict[JudgeConfig, JudgeClient] = {}


def client_for(config: JudgeConfig) -> JudgeClient:
    if config not in _CLIENTS:
        _CLIENTS[config] = JudgeClient(config)
    return _CLIENTS[config]


async def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    *,
    judge: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's (async) reward signature with the judge as the whole reward; its settings come as the reward kwarg
    ``judge`` (``reward.custom_reward_function.reward_kwargs.judge``). The prompt is ``extra_info["prompt"]`` when the
    data carries it.
    """
    del data_source, ground_truth, kwargs
    if judge is None:
        msg = "loka_trainer.rewards.judge:compute_score needs the reward kwarg `judge` (endpoint, model, ...)"
        raise ValueError(msg)
    config = JudgeConfig.from_mapping(judge)
    prompt = (extra_info or {}).get("prompt")
    verdict = await client_for(config).judge(prompt, solution_str)
    return {"score": verdict.score, **verdict.as_components(config.name)}
