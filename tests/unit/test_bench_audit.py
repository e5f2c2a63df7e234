"""The benchmarks' readings of the API server's audit log: a run's writes in order (bench/timeline.py) and children
created twice or for a deleted run (bench/churn.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.churn import duplicates
from bench.timeline import per_run, run_of, steps
from localcluster.faults import AuditEvent

T0 = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
OPERATOR, CLIENT = "loka-a", "admin"


def write(
    at: float,
    verb: str,
    resource: str,
    name: str,
    *,
    user: str = OPERATOR,
    agent: str = "loka-operator",
    code: int = 201,
) -> AuditEvent:
    return AuditEvent(user, verb, resource, "ns", name, code, T0 + timedelta(seconds=at), agent)


def test_objects_belong_to_the_run_named_inside_their_name() -> None:
    assert run_of("run-3", "run-") == "run-3"
    assert run_of("loka-run-3-ray-token", "run-") == "run-3"
    assert run_of("rayjob-run-3-2f9ab", "run-") == "run-3"
    assert run_of("run-31", "run-") == "run-31"  # not run-3
    assert run_of("run-3x", "run-") is None


def test_the_timeline_orders_each_step_by_its_median_offset_from_the_apply() -> None:
    events = [
        write(-5, "create", "serviceaccounts", "loka-run-1", agent="OpenAPI-Generator/31.0.0/python"),
        write(0, "create", "rayjobs", "run-1", agent="OpenAPI-Generator/31.0.0/python"),
        write(2, "create", "workloads", "rayjob-run-1-abcde", agent="kueue/v0.19.2"),
        write(4, "patch", "rayjobs/status", "run-1", agent="ray-operator/v1.6.2"),
        write(6, "patch", "rayjobs/status", "run-1", agent="ray-operator/v1.6.2"),
        write(1, "create", "rayjobs", "run-2", agent="OpenAPI-Generator/31.0.0/python"),
        write(4, "create", "workloads", "rayjob-run-2-abcde", agent="kueue/v0.19.2"),
        write(3, "create", "workloads", "rayjob-run-2-failed", agent="kueue/v0.19.2", code=409),  # did not land
    ]
    found = {s.label: s for s in steps(per_run(events, "ns", "run-"))}
    assert [s.label for s in sorted(found.values(), key=lambda s: s.offset_p50)] == [
        "client create serviceaccounts",
        "client create rayjobs",
        "kueue create workloads",
        "ray-operator patch rayjobs/status",
        "ray-operator patch rayjobs/status #2",
    ]
    assert found["kueue create workloads"].offset_p50 == 2.5  # run-1 after 2 s, run-2 after 3 s
    assert found["client create serviceaccounts"].runs == 1


def test_a_child_created_twice_in_one_run_life_is_a_duplicate() -> None:
    events = [
        write(0, "create", "trainingruns", "run-1", user=CLIENT),
        write(1, "create", "rayjobs", "run-1"),
        write(2, "create", "rayjobs", "run-1", user="loka-b"),  # the other replica, once the first had it
        write(3, "create", "rayjobs", "run-1", code=409),  # refused: no duplicate
        write(4, "delete", "trainingruns", "run-1", user=CLIENT),
        write(5, "create", "serviceaccounts", "loka-run-run-1"),  # no run of that name now
        write(6, "create", "trainingruns", "run-1", user=CLIENT),
        write(7, "create", "rayjobs", "run-1"),  # the new run's own
        write(8, "create", "secrets", "loka-run-run-1-ray-token"),
    ]
    assert duplicates(events, {OPERATOR, "loka-b"}) == (1, 1)
