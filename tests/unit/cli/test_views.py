"""What `loka status` shows of a stage: SFT's loss, the validation figures with their step, where a run started."""

from __future__ import annotations

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
