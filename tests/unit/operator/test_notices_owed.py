"""Which notices a phase write owes: one per transition and attempt, short phases included, never one twice."""

from __future__ import annotations

from datetime import UTC, datetime

from loka_api import NotificationEvent, NotificationRecord, NotificationState, RunPhase, TrainingRunStatus
from loka_operator.notifications import MAX_RECORDS, bounded, owed

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
ALL = frozenset(NotificationEvent)


def status(phase: RunPhase, attempt: int = 1, *records: NotificationRecord) -> TrainingRunStatus:
    return TrainingRunStatus(phase=phase, attempt=attempt, notifications=list(records))


def events(records: list[NotificationRecord]) -> list[tuple[str, int]]:
    return [(r.event.value, r.attempt) for r in records]


def test_a_transition_owes_its_event_unclaimed() -> None:
    (record,) = owed(status(RunPhase.STARTING), status(RunPhase.RUNNING), ALL, ran=True, now=NOW)
    assert (record.event, record.attempt, record.state, record.sender) == (
        NotificationEvent.STARTED, 1, NotificationState.SENDING, None,
    )  # fmt: skip


def test_a_run_that_finished_before_it_was_seen_running_owes_its_start_first() -> None:
    done = owed(status(RunPhase.STARTING), status(RunPhase.SUCCEEDED), ALL, ran=True, now=NOW)
    assert events(done) == [("Started", 1), ("Succeeded", 1)]


def test_a_run_that_failed_before_its_job_ran_did_not_start() -> None:
    failed = owed(status(RunPhase.STARTING), status(RunPhase.FAILED), ALL, ran=False, now=NOW)
    assert events(failed) == [("Failed", 1)]


def test_a_retry_seen_only_as_a_new_attempt_owes_that_attempts_start() -> None:
    again = owed(status(RunPhase.RUNNING, 1), status(RunPhase.RUNNING, 2), ALL, ran=True, now=NOW)
    assert events(again) == [("Started", 2)]


def test_nothing_is_owed_twice_nor_unasked_for() -> None:
    sent = NotificationRecord(event=NotificationEvent.STARTED, attempt=1, state=NotificationState.SENT)
    previous, current = status(RunPhase.STARTING), status(RunPhase.RUNNING, 1, sent)
    assert owed(previous, current, ALL, ran=True, now=NOW) == []
    assert owed(status(RunPhase.RUNNING), status(RunPhase.RUNNING), ALL, ran=True, now=NOW) == []
    only_failed = frozenset({NotificationEvent.FAILED})
    assert owed(status(RunPhase.STARTING), status(RunPhase.RUNNING), only_failed, ran=True, now=NOW) == []


def test_the_record_list_drops_settled_notices_first() -> None:
    owed_one = NotificationRecord(event=NotificationEvent.FAILED, attempt=0, state=NotificationState.SENDING)
    settled = [
        NotificationRecord(event=NotificationEvent.STARTED, attempt=n, state=NotificationState.SENT)
        for n in range(1, MAX_RECORDS + 1)
    ]
    kept = bounded([owed_one, *settled])
    assert len(kept) == MAX_RECORDS and kept[0] is owed_one and kept[-1] is settled[-1]
