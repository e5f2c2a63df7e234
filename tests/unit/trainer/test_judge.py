"""The judge reward component against a real OpenAI-API-speaking judge on a local port, in each of its modes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.judge_server import JudgeBehaviour, JudgeServer
from loka_trainer.rewards import judge as judge_module
from loka_trainer.rewards.judge import JudgeClient, JudgeConfig, Verdict, compute_score, judge_step_metrics, parse_score


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    with JudgeServer() as running:
        yield running


def config(server: JudgeServer, **overrides: Any) -> JudgeConfig:
    values: dict[str, Any] = {"endpoint": server.url, "model": "digits", "backoff_s": 0.01, "timeout_s": 10.0}
    values.update(overrides)
    return JudgeConfig(**values)


def judge_all(cfg: JudgeConfig, responses: list[str]) -> list[Verdict]:
    async def go() -> list[Verdict]:
        client = JudgeClient(cfg)
        try:
            return list(await asyncio.gather(*(client.judge("What is 6*7?", r) for r in responses)))
        finally:
            await client.close()

    return asyncio.run(go())


def test_scores_are_the_judges_deterministic_verdicts_in_zero_to_one(server: JudgeServer) -> None:
    verdicts = judge_all(config(server), ["42", "ab12", "no digits"])
    assert [v.score for v in verdicts] == [1.0, 0.5, 0.0]
    assert all(v.ok and v.answered and v.error is None and v.attempts == 1 for v in verdicts)
    assert all(v.tokens > 0 and v.latency_s > 0 for v in verdicts)
    assert server.log.temperatures == [0.0, 0.0, 0.0]


def test_samples_ask_the_judge_that_many_times_and_average(server: JudgeServer) -> None:
    verdicts = judge_all(config(server, model="length", samples=3, temperature=0.7), ["x" * 20])
    assert verdicts[0].score == 0.5
    assert server.log.requests == 3
    assert server.log.temperatures == [0.7] * 3


def test_a_judge_failing_with_5xx_is_retried_until_it_answers(server: JudgeServer) -> None:
    server.set_mode("error", fail_first=2)
    (verdict,) = judge_all(config(server, retries=3), ["7"])
    assert verdict.ok and verdict.score == 1.0
    assert verdict.attempts == 3
    assert server.log.statuses[500] == 2


def test_a_judge_down_for_good_scores_the_failure_score_after_the_retries(server: JudgeServer) -> None:
    server.set_mode("error")
    (verdict,) = judge_all(config(server, retries=2, failure_score=0.25), ["7"])
    assert not verdict.ok and not verdict.answered
    assert verdict.score == 0.25
    assert verdict.error == "http 500"
    assert server.log.requests == 3  # the first try and two retries, no more


def test_rate_limiting_429_is_retried_with_backoff(server: JudgeServer) -> None:
    server.set_mode("ratelimit", fail_first=2)
    (verdict,) = judge_all(config(server), ["1"])
    assert verdict.ok and verdict.attempts == 3
    assert server.log.statuses[429] == 2


def test_other_4xx_are_not_retried(server: JudgeServer) -> None:
    server.set_mode("bad_request")
    (verdict,) = judge_all(config(server, retries=5), ["1"])
    assert verdict.error == "http 400" and verdict.attempts == 1
    assert server.log.requests == 1


def test_a_slow_judge_is_cut_at_the_timeout_and_the_sample_goes_on(server: JudgeServer) -> None:
    server.set_mode("slow", delay_s=30)
    started = time.monotonic()
    verdicts = judge_all(config(server, timeout_s=0.5, max_concurrency=4), ["1"] * 8)
    elapsed = time.monotonic() - started
    assert all(v.error == "timeout" and v.score == 0.0 for v in verdicts)
    # Eight verdicts, four at a time, each bounded by its own 0.5 s budget that includes waiting for a slot.
    assert elapsed < 3.0


def test_at_most_max_concurrency_requests_are_in_flight(server: JudgeServer) -> None:
    server.set_mode("slow", delay_s=0.2)
    verdicts = judge_all(config(server, max_concurrency=3), ["1"] * 12)
    assert all(v.ok for v in verdicts)
    assert server.log.max_in_flight == 3


def test_malformed_answers_count_against_the_parse_rate_not_the_error_rate(server: JudgeServer) -> None:
    server.set_mode("malformed")
    verdicts = judge_all(config(server), ["1", "2"])
    assert all(v.answered and not v.ok and v.error == "unparseable" for v in verdicts)
    figures = judge_step_metrics(verdicts)
    assert figures["judge/parse_rate"] == 0.0
    assert figures["judge/error_rate"] == 0.0


def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = JudgeConfig(endpoint=f"http://127.0.0.1:{port}/v1", model="digits", retries=1, backoff_s=0.01)
    (verdict,) = judge_all(cfg, ["1"])
    assert verdict.error == "connection" and verdict.attempts == 2 and verdict.score == 0.0


def test_the_api_key_comes_from_the_named_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-judge-test-value"
    with JudgeServer(JudgeBehaviour(api_key=secret)) as server:
        monkeypatch.delenv("LOKA_TEST_JUDGE_KEY", raising=False)
        (refused,) = judge_all(config(server, api_key_env="LOKA_TEST_JUDGE_KEY", retries=3), ["1"])
        assert refused.error == "http 401" and refused.attempts == 1  # a bad key does not heal: no retry
        monkeypatch.setenv("LOKA_TEST_JUDGE_KEY", secret)
        (accepted,) = judge_all(config(server, api_key_env="LOKA_TEST_JUDGE_KEY"), ["1"])
        assert accepted.ok
        assert secret not in repr(accepted) and secret not in repr(refused)


def test_compute_score_returns_the_same_keys_on_success_and_on_failure(server: JudgeServer) -> None:
    settings = {"endpoint": server.url, "model": "digits", "backoffS": 0.01, "retries": 0}

    async def score(text: str) -> dict[str, float]:
        return await compute_score("toy", text, "", {"prompt": "2+2?"}, judge=settings)

    good = asyncio.run(score("4"))
    server.set_mode("error")
    bad = asyncio.run(score("4"))
    server.set_mode("malformed")
    unparsed = asyncio.run(score("4"))
    assert good["score"] == 1.0 and bad["score"] == 0.0 and unparsed["score"] == 0.0
    assert set(good) == set(bad) == set(unparsed) == {"score", *JudgeConfig.from_mapping(settings).keys()}
    assert (bad["judge_error"], unparsed["judge_error"], unparsed["judge_ok"]) == (1.0, 0.0, 0.0)
    judge_module._CLIENTS.clear()


def test_unknown_judge_settings_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown setting.*temprature"):
        JudgeConfig.from_mapping({"endpoint": "http://j/v1", "model": "m", "temprature": 0.5})
    with pytest.raises(ValueError, match=r"judge\.endpoint.*ftp://j"):
        JudgeConfig.from_mapping({"endpoint": "ftp://j", "model": "m"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Score: 7", 0.7), ("score = 10", 1.0), ('{"score": 3}', 0.3), ("Score: 4\nScore: 9", 0.9), ("none", None)],
)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


def test_step_figures_of_a_mixed_batch() -> None:
    verdicts = [
        Verdict(1.0, True, True, None, 0.1, tokens=10),
        Verdict(0.0, False, True, "unparseable", 0.3, tokens=5),
        Verdict(0.0, False, False, "timeout", 0.8),
        Verdict(0.5, True, True, None, 0.2, tokens=10),
    ]
    figures = judge_step_metrics(verdicts)
    assert figures == {
        "judge/parse_rate": pytest.approx(2 / 3),
        "judge/error_rate": 0.25,
        "judge/latency_s/mean": pytest.approx(0.35),
        "judge/latency_s/max": 0.8,
        "judge/tokens": 25.0,
    }
