"""An evaluation over a run's real rollouts in MinIO: a tiny GRPO run (trl, CPU) keeps its rollouts, two judges on
a local OpenAI-API server score them, and a re-run asks nothing twice.
"""

from __future__ import annotations

import json

from localcluster.judge_server import JudgeServer, judge_score
from loka_api.storage import S3Uri
from loka_trainer.evaluation import PREFERENCES_FILE, SCORES_FILE, SUMMARY_FILE, Evaluation, EvaluationPlan
from loka_trainer.rewards.judge import JudgeConfig
from tests.trainer.conftest import RUN_TIMEOUT_S, TrainerCase, create_run, read_run, run_spec, start_trainer


def test_two_judges_score_a_runs_rollouts_into_scores_and_preferences_and_a_rerun_skips_them(
    case: TrainerCase,
) -> None:
    spec = run_spec(case.prefix, max_steps=2, every=2)
    spec["rollouts"] = {"every": 1}
    create_run(case.k8s, case.namespace, "tiny-eval", spec)
    log = case.work / "trainer.log"
    trainer = start_trainer(case.env_for("tiny-eval"), case.work / "work", log)
    try:
        assert trainer.wait(timeout=RUN_TIMEOUT_S) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        trainer.kill()
    rollouts = read_run(case.k8s, case.namespace, "tiny-eval")["status"]["rollouts"]["uri"]
    output = str(case.prefix.join("eval"))

    with JudgeServer() as server:
        judges = [
            JudgeConfig(endpoint=server.url, model="digits", name="digits", max_concurrency=4),
            JudgeConfig(endpoint=server.url, model="length", name="length", max_concurrency=4),
        ]
        plan = EvaluationPlan(rollouts_uri=rollouts, output_uri=output, judges=judges, steps="all")
        first = Evaluation(plan, case.store).run()
        asked = server.log.requests
        second = Evaluation(plan, case.store).run()

    assert first.steps == [1, 2]
    assert first.samples == 2 * (2 * 4)  # two steps of batchSize prompts x samplesPerPrompt
    assert first.samples_judged == first.samples and first.scored_now == 2 * first.samples
    assert asked == 2 * first.samples
    assert second.scored_now == 0 and server.log.requests == asked  # the re-run asked the judges nothing
    assert first.judges["digits"].parse_rate == 1.0 and first.judges["length"].error_rate == 0.0
    assert first.tokens > 0 and first.agreement is not None and 0.0 <= first.agreement <= 1.0

    scores = [
        json.loads(line) for line in (case.store.get_bytes(case.prefix.join("eval", SCORES_FILE)) or b"").splitlines()
    ]
    assert len(scores) == 2 * first.samples
    samples = {}
    for step in (1, 2):
        body = case.store.get_bytes(S3Uri.parse(rollouts).join(f"step_{step}.jsonl")) or b""
        samples.update({s["id"]: s for s in map(json.loads, body.splitlines())})
    for line in scores:  # each score is the judge's verdict on that very trajectory's response
        response = samples[line["id"]]["messages"][-1]["content"]
        assert line["score"] == judge_score(line["judge"], response) / 10

    pairs = [
        json.loads(line)
        for line in (case.store.get_bytes(case.prefix.join("eval", PREFERENCES_FILE)) or b"").splitlines()
    ]
    assert len(pairs) == first.preferences == second.preferences > 0
    for pair in pairs:  # TRL's conversational preference form, the chosen response scored higher
        assert pair["prompt"] and pair["prompt"][-1]["role"] == "user"
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        assert samples[pair["chosen_id"]]["group"] == samples[pair["rejected_id"]]["group"]
        assert pair["score_margin"] > 0
    summary = json.loads(case.store.get_bytes(case.prefix.join("eval", SUMMARY_FILE)) or b"{}")
    assert summary["samples"] == first.samples and summary["preferences"] == first.preferences
