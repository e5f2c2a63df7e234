"""What `loka status` shows of a stage: SFT's loss, the validation figures with their step, where a run started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loka_cli.views import live_view
from loka_client.describe import describe_line

SFT: dict[str, Any] = {
    "metadata": {"name": "toy-sft", "namespace": "loka"},
    "status": {
        "phase": "Running",
        "progress": {"step": 20, "totalSteps": 40},
        "metrics": {"loss": 1.234, "validationLoss": 1.5, "validationStep": 20},
    },
}
GRPO: dict[str, Any] = {
    "metadata": {"name": "toy-grpo", "namespace": "loka"},
    "status": {
        "phase": "Running",
        "progress": {"step": 3, "totalSteps": 10},
        "metrics": {"rewardMean": 0.25, "klLoss": 0.001, "validationRewardMean": 0.42, "validationStep": 0},
        "source": {"run": "toy-sft", "uid": "u", "step": 40, "uri": "s3://ckpt/loka/toy-sft/global_step_40"},
    },
}


def test_an_sft_run_shows_its_loss_and_validation_loss() -> None:
    view = live_view(SFT)
    assert "loss 1.234" in view and "reward" not in view
    assert "validation loss 1.500 at step 20" in view
    assert "loss 1.234" in describe_line(SFT["status"])


def test_a_run_from_another_shows_its_source_and_the_validation_reward_of_its_starting_weights() -> None:
    view = live_view(GRPO)
    assert "reward 0.250" in view
    assert "validation reward 0.420 before training" in view
    assert "started from run toy-sft, checkpoint step 40  s3://ckpt/loka/toy-sft/global_step_40" in view
    assert "validation reward 0.420 before training" in describe_line(GRPO["status"])


def test_a_waiting_run_says_which_run_it_waits_for() -> None:
    waiting: dict[str, Any] = {
        "metadata": {"name": "toy-grpo", "namespace": "loka"},
        "status": {"phase": "Pending", "message": "waiting for run 'toy-sft' to have its final checkpoint"},
    }
    assert "waiting for run 'toy-sft'" in live_view(waiting)
    assert "waiting for run 'toy-sft'" in describe_line(waiting["status"])


def test_a_preempted_run_shows_what_its_interruptions_cost() -> None:
    run: dict[str, Any] = {
        "metadata": {"name": "low", "namespace": "loka"},
        "status": {
            "phase": "Running",
            "attempt": 3,
            "progress": {"step": 150, "totalSteps": 900},
            "interruptions": [
                {
                    "attempt": 1,
                    "time": "2026-12-07T01:00:00Z",
                    "reason": "Retrying",
                    "stepReached": 20,
                    "resumedFrom": 10,
                    "stepsLost": 10,
                    "gpuHoursLost": 4.0,
                    "runningAgainAfterSeconds": 120,
                },
                {
                    "attempt": 2,
                    "time": "2026-12-07T02:00:00Z",
                    "reason": "PreemptedInClusterQueue",
                    "stepReached": 137,
                    "resumedFrom": 137,
                    "stepsLost": 0,
                    "gpuHoursLost": 0.0,
                    "runningAgainAfterSeconds": 1800,
                },
            ],
            "interruptionTotals": {"count": 2, "stepsLost": 10, "gpuHoursLost": 4.0, "secondsStopped": 1920},
        },
    }
    view = live_view(run)
    assert "interrupted 2 times: 10 steps lost, 4.00 GPU-hours, stopped 32m" in view
    assert "last: PreemptedInClusterQueue (step 137 -> resumed from 137)" in view
    assert "interrupted" not in live_view(GRPO)


NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _deadlined(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "timed", "namespace": "loka"},
        "spec": {"deadline": {"seconds": 7200}},
        "status": {"phase": phase, "startTime": "2026-12-07T02:00:00Z", **status},
    }


def test_a_run_with_a_deadline_shows_the_time_left_then_that_it_passed() -> None:
    running = live_view(_deadlined("Running"), now=NOW)
    assert "deadline in 60m (at 2026-12-07 04:00:00 UTC, 2h00m from its start)" in running
    stopping = live_view(_deadlined("Running"), now=NOW + timedelta(minutes=61))
    assert "deadline exceeded 60s ago (at 2026-12-07 04:00:00 UTC): the run ends after saving the step" in stopping
    queued = {**_deadlined("Pending"), "status": {"phase": "Pending"}}
    assert "deadline 2h00m from its first start" in live_view(queued, now=NOW)
    assert "deadline" not in live_view(GRPO, now=NOW)


def test_a_run_its_deadline_ended_says_so_and_one_that_finished_in_time_says_by_how_much() -> None:
    failed = _deadlined(
        "Failed",
        conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "…"}],
        completionTime="2026-12-07T04:00:20Z",
    )
    assert "deadline exceeded at 2026-12-07 04:00:00 UTC (2h00m from its start): ended with its last checkpoint" in (
        live_view(failed, now=NOW + timedelta(hours=5))
    )
    succeeded = _deadlined("Succeeded", completionTime="2026-12-07T03:30:00Z")
    assert "deadline 2h00m: finished 30m before it" in live_view(succeeded, now=NOW + timedelta(hours=5))


def test_a_source_run_shows_which_dependents_hold_which_checkpoints() -> None:
    pins = [{"step": 120, "run": f"grpo-{i}", "uid": f"u{i}"} for i in range(6)]
    pins.append({"step": 100, "run": "grpo-from-sft", "uid": "u"})
    source = {**SFT, "status": {**SFT["status"], "pins": pins}}
    view = live_view(source)
    assert (
        "kept for dependent runs: checkpoint step 100 for grpo-from-sft; "
        "step 120 for grpo-0, grpo-1, grpo-2, grpo-3 and 2 more"
    ) in view
    assert "kept for" not in live_view(SFT)
