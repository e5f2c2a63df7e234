"""What an interruption cost, as the status calculator records it: opened when an attempt ends early (in Kueue's
words), settled when the next attempt's trainer says which checkpoint it restored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from loka_api import Metrics, Progress, TrainingRunStatus
from loka_operator.status import Observed, calculate_status
from tests.unit.operator.test_status import ADMITTED, NOW, PREEMPTED, rayjob, workload

GPUS = 16


def step(
    status: TrainingRunStatus, seconds: float, rj: dict[str, Any], wl: dict[str, Any], *, suspend: bool = False
) -> TrainingRunStatus:
    obs = Observed(
        generation=1, suspend=suspend, queued=True, now=NOW + timedelta(seconds=seconds), rayjob=rj, workload=wl,
        gpus=GPUS,
    )  # fmt: skip
    return calculate_status(obs, status).status


def trainer_reports(status: TrainingRunStatus, **progress: Any) -> TrainingRunStatus:
    """What the trainer patches into status (its fields), merged as the API server does."""
    merged = status.model_copy(deep=True)
    current = (merged.progress or Progress()).model_dump()
    merged.progress = Progress(**{**current, **progress})
    merged.metrics = Metrics(seconds_per_step=90.0)
    return merged


def test_a_preemption_records_when_why_the_steps_and_gpu_hours_lost_and_the_time_until_running_again() -> None:
    status = step(TrainingRunStatus(), 0, rayjob("Running", "RUNNING"), ADMITTED)
    status = trainer_reports(status, step=137, attempt=1, resumed_from=0)
    status = step(status, 10, rayjob("Suspending"), PREEMPTED)  # Kueue preempts attempt 1
    (open_,) = status.interruptions
    assert (open_.attempt, open_.reason, open_.step_reached) == (1, "PreemptedInClusterQueue", 137)
    assert open_.message is not None and open_.message.startswith("suspended by Kueue: Preempted to accommodate")
    assert open_.running_again_after_seconds is None
    assert status.interruption_totals is not None and status.interruption_totals.count == 1

    status = step(status, 300, rayjob("Running", "RUNNING"), ADMITTED)  # attempt 2 runs, its trainer not heard yet
    assert status.interruptions[-1].running_again_after_seconds is None
    status = trainer_reports(status, step=130, attempt=2, resumed_from=130)  # it restored checkpoint 130
    status = step(status, 310, rayjob("Running", "RUNNING"), ADMITTED)

    (settled,) = status.interruptions
    assert (settled.step_reached, settled.resumed_from, settled.steps_lost) == (137, 130, 7)
    assert settled.gpu_hours_lost == round(7 * 90 * GPUS / 3600, 4)  # 2.8
    assert settled.running_again_after_seconds == 300.0
    totals = status.interruption_totals
    assert totals is not None
    assert (totals.count, totals.steps_lost, totals.gpu_hours_lost, totals.seconds_stopped) == (1, 7, 2.8, 300.0)


def test_a_save_on_the_way_out_loses_nothing_and_a_suspension_is_the_users() -> None:
    status = step(TrainingRunStatus(), 0, rayjob("Running", "RUNNING"), ADMITTED)
    status = trainer_reports(status, step=40, attempt=1, resumed_from=0)
    status = step(status, 5, rayjob("Suspended"), workload(active=False), suspend=True)
    status = step(status, 60, rayjob("Running", "RUNNING"), ADMITTED)
    status = trainer_reports(status, step=41, attempt=2, resumed_from=41)  # the step in flight was saved
    status = step(status, 61, rayjob("Running", "RUNNING"), ADMITTED)

    (settled,) = status.interruptions
    assert (settled.reason, settled.step_reached, settled.resumed_from, settled.steps_lost) == ("Suspended", 41, 41, 0)
    assert settled.gpu_hours_lost == 0.0


def test_a_retry_counts_and_totals_add_up_over_interruptions() -> None:
    status = step(TrainingRunStatus(), 0, rayjob("Running", "RUNNING"), ADMITTED)
    status = trainer_reports(status, step=20, attempt=1, resumed_from=0)
    status = step(status, 1, rayjob("Retrying", failed=1), ADMITTED)  # the Ray job failed: a node was lost
    status = step(status, 30, rayjob("Running", "RUNNING", failed=1), ADMITTED)
    status = trainer_reports(status, step=10, attempt=2, resumed_from=10)
    status = step(status, 31, rayjob("Running", "RUNNING", failed=1), ADMITTED)
    status = trainer_reports(status, step=25, attempt=2, resumed_from=10)
    status = step(status, 40, rayjob("Suspending", failed=1), PREEMPTED)
    status = step(status, 100, rayjob("Running", "RUNNING", failed=1), ADMITTED)
    status = trainer_reports(status, step=20, attempt=3, resumed_from=20)
    status = step(status, 101, rayjob("Running", "RUNNING", failed=1), ADMITTED)

    assert [(r.reason, r.steps_lost) for r in status.interruptions] == [
        ("Retrying", 10),
        ("PreemptedInClusterQueue", 5),
    ]
    totals = status.interruption_totals
    assert totals is not None
    assert (totals.count, totals.steps_lost, totals.seconds_stopped) == (2, 15, 91.0)
