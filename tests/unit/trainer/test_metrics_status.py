"""Following verl's metrics file and turning it into rate-limited status patches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loka_api.checkpoints import CheckpointRecord
from loka_trainer.status_reporter import StatusReporter, progress_patch
from loka_trainer.step_metrics import MetricsFollower, MetricsWriter, StepMetrics, parse_line

VERL_STEP = {
    "training/global_step": 7,
    "training/epoch": 1,
    "critic/score/mean": 0.61,
    "actor/kl_loss": 0.002,
    "response_length/mean": 311.5,
    "perf/total_num_tokens": 54000,
    "perf/time_per_step": 10.0,
    "perf/throughput": 675.0,
    "val-core/openai/gsm8k/acc/mean@1": 0.4,
}


def line(step: int, **extra: float) -> bytes:
    return json.dumps({"step": step, "data": {**VERL_STEP, "training/global_step": step, **extra}}).encode() + b"\n"


def test_verl_step_record_maps_to_status_fields() -> None:
    parsed = parse_line(line(7))
    assert parsed == StepMetrics(
        step=7,
        epoch=1,
        reward_mean=0.61,
        kl_loss=0.002,
        response_length_mean=311.5,
        tokens_per_second=5400.0,
        validation_reward_mean=0.4,
        validation_step=7,
        seconds_per_step=10.0,
    )


def test_the_reward_figure_wins_over_other_validation_figures() -> None:
    parsed = parse_line(line(3, **{"val-core/openai/gsm8k/reward/mean@4": 0.7}))
    assert parsed is not None
    assert (parsed.validation_reward_mean, parsed.validation_step) == (0.7, 3)


def test_verl_sft_logs_its_loss_and_validation_loss_as_two_records_of_one_step() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, total_steps=10, min_interval=10.0, clock=FakeClock())
    train = parse_line(json.dumps({"step": 5, "data": {"train/loss": 1.25, "train/lr": 1e-5}}))
    validation = parse_line(json.dumps({"step": 5, "data": {"val/loss": 1.5}}))
    assert train is not None and validation is not None
    assert (train.loss, train.validated) == (1.25, False)
    reporter.report_metrics(StepMetrics(step=4, loss=1.5))  # sent at once: the interval starts here
    reporter.report_metrics(train)
    reporter.report_metrics(validation)
    reporter.flush()
    assert sent[-1]["progress"]["step"] == 5
    assert sent[-1]["metrics"]["loss"] == 1.25
    assert sent[-1]["metrics"]["validationLoss"] == 1.5
    assert sent[-1]["metrics"]["validationStep"] == 5


def test_a_validation_result_is_not_dropped_when_newer_steps_overtake_it_within_the_interval() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, min_interval=10.0, clock=FakeClock())
    reporter.report_metrics(StepMetrics(step=1, reward_mean=0.1))
    reporter.report_metrics(StepMetrics(step=2, reward_mean=0.2, validation_reward_mean=0.5, validation_step=2))
    reporter.report_metrics(StepMetrics(step=3, reward_mean=0.3))
    reporter.flush()
    last = sent[-1]
    assert last["progress"]["step"] == 3
    assert last["metrics"]["rewardMean"] == 0.3
    assert (last["metrics"]["validationRewardMean"], last["metrics"]["validationStep"]) == (0.5, 2)


def test_throughput_falls_back_to_verl_per_gpu_figure_without_totals() -> None:
    parsed = parse_line(json.dumps({"step": 3, "data": {"perf/throughput": 99.0}}))
    assert parsed is not None
    assert (parsed.step, parsed.tokens_per_second, parsed.reward_mean) == (3, 99.0, None)


def test_non_finite_and_non_numeric_values_are_dropped() -> None:
    parsed = parse_line(b'{"step": 2, "data": {"critic/score/mean": NaN, "actor/kl_loss": "x"}}')
    assert parsed is not None
    assert (parsed.reward_mean, parsed.kl_loss) == (None, None)


def test_garbage_lines_are_not_steps() -> None:
    for raw in (b"", b"{", b"[]", b'{"data": {}}', b'{"step": 1}', b"\xff\xfe"):
        assert parse_line(raw) is None


def test_follower_reads_only_complete_lines_and_survives_truncation(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert list(follower.poll()) == []  # not created yet
    path.write_bytes(line(1) + line(2)[:20])
    assert [m.step for m in follower.poll()] == [1]
    with path.open("ab") as handle:
        handle.write(line(2)[20:] + line(3))
    assert [m.step for m in follower.poll()] == [2, 3]
    path.write_bytes(line(4))  # verl reopens the file with "wb" after a restart
    assert [m.step for m in follower.poll()] == [4]


def test_lines_written_in_verls_format_read_back_as_steps(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    writer = MetricsWriter(path)
    for step in (1, 2, 3):
        writer.log(step, {"training/global_step": step, "critic/score/mean": step / 10})
    writer.close()
    assert [(m.step, m.reward_mean) for m in MetricsFollower(path).poll()] == [(1, 0.1), (2, 0.2), (3, 0.3)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reporter_sends_at_most_once_per_interval_and_always_the_last() -> None:
    sent: list[dict[str, Any]] = []
    clock = FakeClock()
    reporter = StatusReporter(sent.append, total_steps=50, min_interval=10.0, clock=clock)
    for step in range(1, 31):  # one step per second for 30 s
        reporter.report_metrics(StepMetrics(step=step, reward_mean=step / 100))
        clock.now += 1.0
    reporter.flush()
    steps = [p["progress"]["step"] for p in sent]
    assert steps == [1, 11, 21, 30]
    assert sent[-1]["progress"] == {"step": 30, "totalSteps": 50}
    assert sent[-1]["metrics"]["rewardMean"] == 0.3
    assert "updatedAt" in sent[-1]["metrics"]


def test_tick_sends_a_pending_update_once_its_interval_has_passed() -> None:
    sent: list[dict[str, Any]] = []
    clock = FakeClock()
    reporter = StatusReporter(sent.append, min_interval=10.0, clock=clock)
    reporter.report_metrics(StepMetrics(step=1))
    reporter.report_metrics(StepMetrics(step=2))
    reporter.tick()
    assert len(sent) == 1
    clock.now += 10.0
    reporter.tick()
    assert [p["progress"]["step"] for p in sent] == [1, 2]


def test_missing_metrics_are_left_out_of_the_patch_not_nulled() -> None:
    sent: list[dict[str, Any]] = []
    StatusReporter(sent.append).report_metrics(StepMetrics(step=4, kl_loss=0.1))
    assert set(sent[0]["metrics"]) == {"klLoss", "updatedAt"}
    assert sent[0]["progress"] == {"step": 4}


def test_checkpoint_and_message_are_sent_immediately() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append)
    reporter.report_checkpoint(CheckpointRecord(step=5, uri="s3://b/ns/r/global_step_5", time="2026-01-01T00:00:00Z"))
    reporter.report_message("x" * 5000)
    assert sent[0] == {
        "checkpoint": {"step": 5, "uri": "s3://b/ns/r/global_step_5", "time": "2026-01-01T00:00:00Z"},
        "progress": {"step": 5},  # a saved checkpoint proves its step was done
    }
    assert len(sent[1]["message"]) == 1024


def test_a_checkpoint_carries_the_pending_progress_so_status_never_lags_behind_it() -> None:
    sent: list[dict[str, Any]] = []
    clock = FakeClock()
    reporter = StatusReporter(sent.append, total_steps=8, min_interval=10.0, clock=clock)
    for step in (1, 2, 3, 4):  # step 1 goes out; 2-4 wait for the interval
        reporter.report_metrics(StepMetrics(step=step, reward_mean=step / 10))
        clock.now += 1.0
    reporter.report_checkpoint(CheckpointRecord(step=4, uri="s3://b/ns/r/global_step_4", time="2026-01-01T00:00:00Z"))
    assert len(sent) == 2, "no extra patch: the progress rides with the checkpoint"
    assert sent[1]["checkpoint"]["step"] == sent[1]["progress"]["step"] == 4
    assert sent[1]["metrics"]["rewardMean"] == 0.4
    reporter.flush()
    assert len(sent) == 2, "nothing was left pending"


def test_progress_never_reads_below_a_saved_checkpoint() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, total_steps=60, min_interval=10.0, clock=FakeClock())
    reporter.report_metrics(StepMetrics(step=5))  # sent; the metrics follower has not read further yet
    reporter.report_checkpoint(CheckpointRecord(step=8, uri="s3://b/ns/r/global_step_8", time="2026-01-01T00:00:00Z"))
    assert sent[-1]["checkpoint"]["step"] == 8
    assert sent[-1]["progress"] == {"step": 8, "totalSteps": 60}
    reporter.report_checkpoint(CheckpointRecord(step=4, uri="s3://b/ns/r/global_step_4", time="2026-01-01T00:00:00Z"))
    assert "progress" not in sent[-1], "an older checkpoint never moves progress back"


def test_metrics_read_late_never_move_progress_back_behind_a_checkpoint() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, total_steps=8, min_interval=10.0, clock=FakeClock())
    # The checkpoint of step 4 lands before the metrics follower has read step 1 from the file.
    reporter.report_checkpoint(CheckpointRecord(step=4, uri="s3://b/ns/r/global_step_4", time="2026-01-01T00:00:00Z"))
    reporter.report_metrics(StepMetrics(step=1, reward_mean=0.25))
    assert sent[-1]["metrics"]["rewardMean"] == 0.25, "the metrics still go out"
    assert "progress" not in sent[-1], "but progress stays at the checkpoint's step 4"


def test_a_resumed_attempt_reports_its_starting_step_and_source_at_once() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, total_steps=60, min_interval=10.0, clock=FakeClock())
    reporter.report_resumed(8, "s3://loka/checkpoints/ns/low", attempt=2)
    assert sent == [
        {
            # The attempt and the step it resumed from: what the operator settles an interruption's cost with.
            "progress": {"step": 8, "totalSteps": 60, "attempt": 2, "resumedFrom": 8},
            "message": "resumed from checkpoint step 8 (s3://loka/checkpoints/ns/low)",
        }
    ]


def test_a_failing_api_never_reaches_the_training_loop() -> None:
    calls: list[int] = []

    def broken(patch: dict[str, Any]) -> None:
        calls.append(1)
        raise RuntimeError("apiserver down")

    reporter = StatusReporter(broken, min_interval=0.0)
    reporter.report_metrics(StepMetrics(step=1))
    reporter.report_message("failed")
    reporter.flush()
    assert len(calls) == 2
    assert reporter.patches_sent == 0


def test_the_reporter_writes_only_the_status_fields_the_contract_gives_the_trainer() -> None:
    from loka_api.contract import TRAINER_STATUS_FIELDS

    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append, total_steps=10, min_interval=0.0)
    reporter.report_resumed(2, "s3://loka/ckpt")
    reporter.report_metrics(parse_line(line(3)) or StepMetrics(step=3))
    reporter.report_checkpoint(CheckpointRecord(step=4, uri="s3://loka/ckpt/global_step_4", time="t"))
    reporter.report_message("trainer stopped by SIGTERM")
    reporter.flush()
    written = {key for patch in sent for key in patch}
    assert written and written <= set(TRAINER_STATUS_FIELDS), written - set(TRAINER_STATUS_FIELDS)


def test_each_reward_components_mean_reaches_status_beside_the_total() -> None:
    """A rubric's components (reward/<name>/mean, logged every step) show in status.metrics, rounded for people;
    the total stays rewardMean and the std/min/max stay in the metrics file."""
    line = json.dumps({"step": 3, "data": {
        "training/global_step": 3, "critic/score/mean": 0.61,
        "reward/total/mean": 0.61, "reward/total/std": 0.2,
        "reward/environment/mean": 0.512345, "reward/environment/max": 1.0,
        "reward/toolExecution/mean": 1.0, "reward/formatCompliance/mean": 0.75,
    }})  # fmt: skip
    metrics = parse_line(line)
    assert metrics is not None
    patch = progress_patch(metrics, total_steps=6)["metrics"]
    assert patch["rewardMean"] == 0.61
    assert patch["rewardComponents"] == {"environment": 0.5123, "toolExecution": 1.0, "formatCompliance": 0.75}
    assert "total" not in patch["rewardComponents"]
    plain = parse_line(json.dumps({"step": 1, "data": {}}))
    assert plain is not None
    assert "rewardComponents" not in progress_patch(plain, None)["metrics"]
