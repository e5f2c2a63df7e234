"""An evaluation: LLM judges over a run's kept rollouts, their scores aggregated, and pairwise preferences.

It reads ``step_<N>.jsonl`` rollouts (the latest step, all, or named steps), asks every judge about every
trajectory it has not scored yet, and writes to the output prefix:

- ``scores.jsonl``: one line per trajectory and judge: ``id, step, group, judge, score, ok, error, raw, latency_s,
  tokens``; a re-run reads it first and skips what is already there (a failed verdict is asked again);
- ``preferences.jsonl``: ``prompt, chosen, rejected`` in TRL's conversational form (lists of messages), paired
  within each prompt group by the aggregated score (``mean``, ``median`` or ``majority``), at least ``min_margin``
  apart, at most ``max_pairs_per_prompt`` per group; plus ``chosen_id``, ``rejected_id`` and ``margin``;
- ``summary.json``: the figures an Evaluation's status shows (:class:`EvaluationSummary`).

Judges are asked concurrently, each within its own concurrency cap; a judge that fails scores nothing (its
error rate says so) and never fails the evaluation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Literal

from loka_api.contract import ROLLOUT_FILE, ROLLOUT_STEPS_ALL, ROLLOUT_STEPS_LATEST
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.rewards.judge import JudgeClient, JudgeConfig, Verdict

log = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
SUMMARY_FILE = "summary.json"
Aggregate = Literal["mean", "median", "majority"]
# A judge "passes" a trajectory at this score: majority votes and the judges' agreement count passes.
PASS_SCORE = 0.5
# Scores are written out every this many verdicts, so an interrupted evaluation keeps what it paid for.
SAVE_EVERY = 256


@dataclass(frozen=True)
class EvaluationPlan:
    rollouts_uri: str  # s3://.../rollouts (a run's status.rollouts.uri)
    output_uri: str
    judges: Sequence[JudgeConfig]
    steps: str | Sequence[int] = ROLLOUT_STEPS_LATEST  # or ROLLOUT_STEPS_ALL, or step numbers
    aggregate: Aggregate = "mean"
    min_margin: float = 0.0
    max_pairs_per_prompt: int = 4

    def check(self) -> None:
        names = [judge.name for judge in self.judges]
        if not names:
            raise ValueError("judges: at least one judge is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"judges: names must be unique, got {names}")
        if self.aggregate not in {"mean", "median", "majority"}:
            raise ValueError(f"aggregate: {self.aggregate!r} is not one of mean, median, majority")


@dataclass
class JudgeFigures:
    judged: int = 0  # verdicts asked for in all (this run and earlier ones)
    parse_rate: float = 0.0  # answers that held a score, among the answers
    error_rate: float = 0.0  # verdicts with no answer (timeout, refused, HTTP error)
    tokens: int = 0


@dataclass
class EvaluationSummary:
    steps: list[int]
    samples: int  # trajectories read
    samples_judged: int  # trajectories with at least one judge's score
    scored_now: int  # verdicts asked for by this run (0 on a re-run that found everything scored)
    preferences: int
    agreement: float | None  # share of trajectories two judges agree on (pass or fail), averaged over judge pairs
    tokens: int
    judges: dict[str, JudgeFigures] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def rollout_steps(store: ObjectStore, rollouts: S3Uri) -> dict[int, S3Uri]:
    found: dict[int, S3Uri] = {}
    for stored in store.list_objects(rollouts):
        match = ROLLOUT_FILE.match(stored.uri.name)
        if match:
            found[int(match.group(1))] = stored.uri
    return found


def pick_steps(available: Sequence[int], wanted: str | Sequence[int]) -> list[int]:
    if not available:
        return []
    if wanted == ROLLOUT_STEPS_LATEST:
        return [max(available)]
    if wanted == ROLLOUT_STEPS_ALL:
        return sorted(available)
    if isinstance(wanted, str):
        msg = f"rollouts.steps: {wanted!r} is not {ROLLOUT_STEPS_LATEST}, {ROLLOUT_STEPS_ALL} or a list of steps"
        raise ValueError(msg)
    missing = sorted(set(wanted) - set(available))
    if missing:
        msg = f"rollouts.steps: step(s) {missing} have no rollouts (kept steps: {sorted(available)})"
        raise ValueError(msg)
    return sorted(set(wanted))


def _jsonl(data: bytes | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data or b"").decode().splitlines() if line.strip()]


def _dump(lines: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in lines).encode()


def aggregate_scores(scores: Sequence[float], how: Aggregate) -> float:
    if how == "median":
        return float(statistics.median(scores))
    if how == "majority":
        passes = sum(score >= PASS_SCORE for score in scores)
        return 1.0 if passes * 2 > len(scores) else 0.0
    return sum(scores) / len(scores)


def agreement(by_sample: Mapping[str, Mapping[str, float]], judges: Sequence[str]) -> float | None:
    """The share of trajectories on which two judges agree (both pass or both fail), averaged over the pairs of judges
    that both scored them; None with fewer than two judges.
    """
    rates = []
    for first, second in combinations(judges, 2):
        both = [s for s in by_sample.values() if first in s and second in s]
        if both:
            rates.append(sum((s[first] >= PASS_SCORE) == (s[second] >= PASS_SCORE) for s in both) / len(both))
    return sum(rates) / len(rates) if rates else None


def preferences(
    samples: Sequence[Mapping[str, Any]], aggregated: Mapping[str, float], *, min_margin: float, max_pairs: int
) -> list[dict[str, Any]]:
    """Pairs within each prompt group, the widest margins first, in TRL's conversational form."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        if sample["id"] in aggregated:
            groups.setdefault(str(sample["group"]), []).append(sample)
    pairs: list[dict[str, Any]] = []
    for group in sorted(groups):
        members = groups[group]
        candidates = []
        for a, b in combinations(members, 2):
            high, low = (a, b) if aggregated[a["id"]] >= aggregated[b["id"]] else (b, a)
            margin = aggregated[high["id"]] - aggregated[low["id"]]
            if margin > 0 and margin >= min_margin:
                candidates.append((margin, high, low))
        candidates.sort(key=lambda c: (-c[0], c[1]["id"], c[2]["id"]))
        for margin, high, low in candidates[:max_pairs]:
            pairs.append(
                {
                    "prompt": high["messages"][:-1],
                    "chosen": high["messages"][-1:],
                    "rejected": low["messages"][-1:],
                    "chosen_id": high["id"],
                    "rejected_id": low["id"],
                    "score_margin": round(margin, 6),  # not `margin`: TRL's RewardTrainer would use that in its loss
                }
            )
    return pairs


def score_line(sample: Mapping[str, Any], judge: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "id": sample["id"],
        "step": sample["step"],
        "group": sample["group"],
        "judge": judge,
        "score": verdict.score if verdict.ok else None,
        "ok": verdict.ok,
        "answered": verdict.answered,
        "error": verdict.error,
        "raw": verdict.raw,
        "latency_s": round(verdict.latency_s, 4),
        "tokens": verdict.tokens,
    }


class Evaluation:
    def __init__(self, plan: EvaluationPlan, store: ObjectStore) -> None:
        plan.check()
        self.plan = plan
        self.store = store
        self.output = S3Uri.parse(plan.output_uri)

    def read_samples(self) -> tuple[list[int], list[dict[str, Any]]]:
        files = rollout_steps(self.store, S3Uri.parse(self.plan.rollouts_uri))
        steps = pick_steps(sorted(files), self.plan.steps)
        samples: list[dict[str, Any]] = []
        for step in steps:
            samples.extend(_jsonl(self.store.get_bytes(files[step])))
        return steps, samples

    def run(self) -> EvaluationSummary:
        return asyncio.run(self.run_async())

    async def run_async(self) -> EvaluationSummary:
        steps, samples = self.read_samples()
        scores_uri = self.output.join(SCORES_FILE)
        # A verdict that came back with a score is kept; one that failed is asked again.
        kept = [line for line in _jsonl(self.store.get_bytes(scores_uri)) if line.get("ok")]
        done = {(line["id"], line["judge"]) for line in kept}
        todo = [(s, j) for s in samples for j in self.plan.judges if (s["id"], j.name) not in done]
        log.info("%d trajectories, %d verdicts already scored, %d to ask", len(samples), len(done), len(todo))
        clients = {judge.name: JudgeClient(judge) for judge in self.plan.judges}
        fresh: list[dict[str, Any]] = []
        try:
            for start in range(0, len(todo), SAVE_EVERY):
                chunk = todo[start : start + SAVE_EVERY]
                verdicts = await asyncio.gather(
                    *(clients[j.name].judge(s["messages"][:-1], _response(s)) for s, j in chunk)
                )
                fresh.extend(score_line(s, j.name, v) for (s, j), v in zip(chunk, verdicts, strict=True))
                self.store.put_bytes(scores_uri, _dump(kept + fresh), content_type="application/x-ndjson")
        finally:
            for client in clients.values():
                await client.close()
        lines = kept + fresh
        return self._finish(steps, samples, lines, scored_now=len(fresh))

    def _finish(
        self, steps: list[int], samples: list[dict[str, Any]], lines: list[dict[str, Any]], *, scored_now: int
    ) -> EvaluationSummary:
        ids = {s["id"] for s in samples}
        by_sample: dict[str, dict[str, float]] = {}
        for line in lines:
            if line["ok"] and line["id"] in ids:
                by_sample.setdefault(line["id"], {})[line["judge"]] = float(line["score"])
        aggregated = {i: aggregate_scores(list(s.values()), self.plan.aggregate) for i, s in by_sample.items()}
        pairs = preferences(
            samples, aggregated, min_margin=self.plan.min_margin, max_pairs=self.plan.max_pairs_per_prompt
        )
        self.store.put_bytes(self.output.join(PREFERENCES_FILE), _dump(pairs), content_type="application/x-ndjson")
        names = [judge.name for judge in self.plan.judges]
        figures: dict[str, JudgeFigures] = {}
        for name in names:
            mine = [line for line in lines if line["judge"] == name and line["id"] in ids]
            answered = [line for line in mine if line.get("answered", line["ok"])]
            figures[name] = JudgeFigures(
                judged=len(mine),
                parse_rate=round(sum(line["ok"] for line in answered) / len(answered), 4) if answered else 0.0,
                error_rate=round(sum(not line.get("answered", line["ok"]) for line in mine) / len(mine), 4)
                if mine
                else 0.0,
                tokens=sum(int(line.get("tokens") or 0) for line in mine),
            )
        summary = EvaluationSummary(
            steps=steps,
            samples=len(samples),
            samples_judged=len(by_sample),
            scored_now=scored_now,
            preferences=len(pairs),
            agreement=None if (rate := agreement(by_sample, names)) is None else round(rate, 4),
            tokens=sum(f.tokens for f in figures.values()),
            judges=figures,
        )
        self.store.put_bytes(
            self.output.join(SUMMARY_FILE), summary.to_json().encode(), content_type="application/json"
        )
        return summary


def _response(sample: Mapping[str, Any]) -> str:
    last = sample["messages"][-1]
    return str(last.get("content", "")) if isinstance(last, Mapping) else str(last)
