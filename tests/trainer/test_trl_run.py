"""`loka-trainer run` end to end on CPU: real GRPO steps (TRL) on a tiny local model, checkpoints in MinIO,
progress in the run's status through the per-run Role, and a SIGTERM that loses at most one interval.
"""

from __future__ import annotations

import signal

from loka_trainer.rollouts import read_rollouts
from tests.trainer.conftest import (
    RUN_TIMEOUT_S,
    TrainerCase,
    create_run,
    read_run,
    run_spec,
    s3_env_values_absent,
    start_trainer,
    wait_for,
)


def test_trl_engine_runs_grpo_steps_stores_checkpoints_and_reports_status(case: TrainerCase) -> None:
    spec = run_spec(case.prefix, max_steps=4, every=2)
    spec["rollouts"] = {"every": 2}
    create_run(case.k8s, case.namespace, "tiny-grpo", spec)
    log = case.work / "trainer.log"
    trainer = start_trainer(case.env_for("tiny-grpo"), case.work / "work", log)
    try:
        code = trainer.wait(timeout=RUN_TIMEOUT_S)
    finally:
        trainer.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert s3_env_values_absent(output)

    status = read_run(case.k8s, case.namespace, "tiny-grpo")["status"]
    assert status["progress"]["step"] == 4
    assert status["progress"]["totalSteps"] == 4
    assert status["metrics"]["responseLengthMean"] > 0
    assert "rewardMean" in status["metrics"]
    assert "klLoss" in status["metrics"]
    assert status["metrics"]["tokensPerSecond"] > 0
    # The held-out split is scored before training and at every checkpoint (checkpoints.every).
    assert 0.0 <= status["metrics"]["validationRewardMean"] <= 1.0
    assert status["metrics"]["validationStep"] == 4
    store = case.checkpoints("tiny-grpo")
    assert status["checkpoint"]["step"] == 4
    assert status["checkpoint"]["uri"] == str(store.step_uri(4))
    assert store.complete_steps() == [2, 4]
    assert store.marker_step() == 4
    manifest = store.manifest(4)
    assert manifest is not None
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= {f.path for f in manifest.files}

    # Rollouts kept every 2 steps, next to the checkpoints under the run's uid, and status points at them.
    assert status["rollouts"] == {"uri": f"{store.prefix}/rollouts", "step": 4}
    files = sorted(o.uri.name for o in case.store.list_objects(store.prefix.join("rollouts")))
    assert files == ["step_2.jsonl", "step_4.jsonl"]
    body = case.store.get_bytes(store.prefix.join("rollouts", "step_4.jsonl"))
    assert body is not None
    lines = read_rollouts(body.decode())
    assert len(lines) == 2 * 4  # batchSize prompts x samplesPerPrompt, every group kept
    assert {line["group"] for line in lines} == {"4-0", "4-1"}
    assert all(line["messages"][-1]["role"] == "assistant" and 0.0 <= line["score"] <= 1.0 for line in lines)


def test_sigterm_stops_the_run_reports_why_and_the_next_attempt_resumes_from_the_last_checkpoint(
    case: TrainerCase,
) -> None:
    create_run(case.k8s, case.namespace, "preempted", run_spec(case.prefix, max_steps=8, every=2))
    env = case.env_for("preempted")
    store = case.checkpoints("preempted")
    log = case.work / "trainer.log"
    case.operator_counts_attempt("preempted", 1)

    first = start_trainer(env, case.work / "attempt-1", log)
    try:
        wait_for(
            lambda: (store.marker_step() or 0) >= 2 or first.poll() is not None,
            timeout=RUN_TIMEOUT_S,
            what="a first checkpoint",
        )
        assert first.poll() is None, log.read_text(errors="replace")[-4000:]
        first.send_signal(signal.SIGTERM)  # what the kubelet sends on preemption or deletion
        code = first.wait(timeout=60)
    finally:
        first.kill()
    assert code == 143, log.read_text(errors="replace")[-4000:]
    stopped_at = store.marker_step()
    assert stopped_at is not None
    assert stopped_at < 8
    assert store.latest_complete() == stopped_at  # an upload cut short never moved the marker
    message = read_run(case.k8s, case.namespace, "preempted")["status"]["message"]
    assert "SIGTERM" in message
    assert f"checkpoint step {stopped_at}" in message
    # Saved on the way out: the step in flight, through TRL's callback, not the last periodic checkpoint.
    assert f"saved step {stopped_at} before stopping" in message, message

    case.operator_counts_attempt("preempted", 2)
    second = start_trainer(env, case.work / "attempt-2", log)  # a fresh pod: empty local disk
    try:
        code = second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        second.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert f"resuming from checkpoint step {stopped_at}" in output
    status = read_run(case.k8s, case.namespace, "preempted")["status"]
    assert status["progress"]["step"] == 8
    assert status["checkpoint"]["step"] == 8
    assert store.marker_step() == 8


def test_missing_training_data_fails_the_run_with_the_uri_in_status(case: TrainerCase) -> None:
    spec = run_spec(case.prefix, max_steps=2, every=2)
    spec["data"]["train"] = f"s3://{case.prefix.bucket}/{case.prefix.key}/data/missing.parquet"
    create_run(case.k8s, case.namespace, "no-data", spec)
    log = case.work / "trainer.log"
    trainer = start_trainer(case.env_for("no-data"), case.work / "work", log)
    try:
        code = trainer.wait(timeout=RUN_TIMEOUT_S)
    finally:
        trainer.kill()
    assert code == 1, log.read_text(errors="replace")[-4000:]
    status = read_run(case.k8s, case.namespace, "no-data")["status"]
    assert status["message"] == f"trainer failed: {spec['data']['train']} does not exist"
    assert "progress" not in status
    assert case.checkpoints("no-data").all_steps() == []
