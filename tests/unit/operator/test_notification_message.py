"""What a Slack notice says about an interruption: in Kueue's words, the step reached, and what it cost."""

from __future__ import annotations

from datetime import UTC, datetime

from loka_api import Interruption, InterruptionTotals, NotificationEvent, TrainingRun
from loka_operator.notifications import message

RUN = {
    "metadata": {"name": "low", "namespace": "team-a"},
    "spec": {"image": "x", "model": {"uri": "hf://a/b"}, "data": {"train": "s3://d/t"}},
}


def test_a_preemption_notice_and_the_next_start_carry_the_figures() -> None:
    run = TrainingRun.model_validate(RUN)
    when = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    run.status.interruptions = [Interruption(attempt=1, time=when, reason="PreemptedInClusterQueue", step_reached=137)]
    run.status.interruption_totals = InterruptionTotals(count=1)
    suspended = message(run, NotificationEvent.SUSPENDED, 2)["text"]
    assert "interrupted (PreemptedInClusterQueue) at step 137" in suspended
    assert "in all 1 interruption, 0 steps and 0.00 GPU-hours lost" in suspended

    run.status.interruptions = [
        Interruption(
            attempt=1, time=when, reason="PreemptedInClusterQueue", step_reached=137, resumed_from=130,
            steps_lost=7, gpu_hours_lost=2.8, running_again_after_seconds=300,
        )
    ]  # fmt: skip
    run.status.interruption_totals = InterruptionTotals(count=1, steps_lost=7, gpu_hours_lost=2.8, seconds_stopped=300)
    started = message(run, NotificationEvent.STARTED, 2)["text"]
    assert "resumed from step 130: 7 steps lost, 2.80 GPU-hours" in started
    assert "in all 1 interruption, 7 steps and 2.80 GPU-hours lost" in started
