"""The watch-backed caches: newest body wins without ordering resourceVersions; what needs no reconcile."""

from __future__ import annotations

from typing import Any

from loka_operator.cache import Children, RunCache, WriteLedger
from loka_operator.children import RAY_JOB, WORKLOAD


def run(rv: str, *, phase: str = "Running", step: int = 1, generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "qwen", "namespace": "team", "resourceVersion": rv, "generation": generation, **meta},
        "spec": {"suspend": False},
        "status": {"phase": phase, "progress": {"step": step}},
    }


def test_a_later_watch_event_wins_whatever_its_resource_version_looks_like() -> None:
    cache = RunCache()
    cache.observe(run("10", phase="Running"))
    cache.observe(run("9", phase="Succeeded"))  # opaque: "9" after "10" is newer, not older
    assert (cache.run("team/qwen") or {})["status"]["phase"] == "Succeeded"


def test_our_status_write_outranks_the_watch_until_the_watch_moves_on() -> None:
    cache = RunCache()
    cache.observe(run("a1", phase="Queued"))
    cache.wrote(run("b7", phase="Running"))
    assert (cache.run("team/qwen") or {})["status"]["phase"] == "Running"  # the watch still shows a1
    cache.observe(run("b7", phase="Running"))
    assert (cache.run("team/qwen") or {})["metadata"]["resourceVersion"] == "b7"
    cache.observe(run("c3", phase="Failed"))  # someone else, after us
    assert (cache.run("team/qwen") or {})["status"]["phase"] == "Failed"


def test_a_skipped_echo_does_not_pin_our_write() -> None:
    cache = RunCache()
    cache.observe(run("a1", phase="Queued"))
    cache.wrote(run("b7", phase="Running"))
    cache.observe(run("c3", phase="Running", step=9))  # kopf coalesced our echo into the trainer's later patch
    assert (cache.run("team/qwen") or {})["status"]["progress"]["step"] == 9


def test_the_echo_of_our_own_write_and_trainer_progress_need_no_reconcile() -> None:
    cache = RunCache()
    assert cache.observe(run("1")) is True  # first sight
    cache.wrote(run("2", phase="Starting"))
    assert cache.observe(run("2", phase="Starting")) is False  # our own write coming back
    assert cache.observe(run("3", phase="Starting", step=5)) is False  # the trainer's progress only
    assert cache.observe(run("4", phase="Succeeded", step=5)) is True  # an operator field changed by someone else
    assert cache.observe(run("5", phase="Succeeded", step=5, generation=2)) is True  # the spec changed
    assert cache.observe(run("6", phase="Succeeded", step=5, generation=2, labels={"a": "b"})) is True


def rayjob(rv: str, uid: str = "u1", **spec: Any) -> dict[str, Any]:
    meta = {"name": "qwen", "namespace": "team", "resourceVersion": rv, "uid": uid, "labels": {"loka.dev/run": "qwen"}}
    template = {"spec": {"containers": [{"name": "ray-head", "image": "x" * 1000}]}}
    return {"metadata": meta, "spec": {"backoffLimit": 3, "rayClusterSpec": {"headGroupSpec": template}, **spec}}


def test_a_deleted_child_stays_gone_until_the_watch_moves_on() -> None:
    children = Children(WriteLedger())
    children.observe(RAY_JOB, "team/qwen", rayjob("5"))
    assert children.get(RAY_JOB, "team/qwen", "qwen") is not None
    children.deleted(RAY_JOB, "team/qwen", "qwen")
    assert children.get(RAY_JOB, "team/qwen", "qwen") is None
    children.gone(RAY_JOB, "team/qwen", rayjob("5"))
    assert children.get(RAY_JOB, "team/qwen", "qwen") is None


def test_children_keep_only_what_reconcile_reads() -> None:
    children = Children(WriteLedger())
    children.observe(RAY_JOB, "team/qwen", rayjob("5", suspend=True))
    (kept,) = children.bodies(RAY_JOB, "team/qwen")
    assert kept["spec"] == {"backoffLimit": 3, "suspend": True}  # no pod templates
    assert kept["metadata"]["labels"] == {"loka.dev/run": "qwen"}


def test_an_earlier_runs_child_and_the_new_one_are_told_apart_by_uid() -> None:
    children = Children(WriteLedger())
    children.observe(RAY_JOB, "team/qwen", rayjob("5", uid="old"))
    children.observe(RAY_JOB, "team/qwen", rayjob("9", uid="new"))
    assert {b["metadata"]["uid"] for b in children.bodies(RAY_JOB, "team/qwen")} == {"old", "new"}
    children.gone(RAY_JOB, "team/qwen", rayjob("5", uid="old"))
    assert [b["metadata"]["uid"] for b in children.bodies(RAY_JOB, "team/qwen")] == ["new"]


def named_run(name: str, uid: str, rv: str = "1") -> dict[str, Any]:
    body = run(rv, uid=uid)
    body["metadata"]["name"] = name
    return body


def test_a_relist_forgets_the_runs_deleted_while_the_watch_was_away() -> None:
    cache = RunCache()
    cache.observe(named_run("kept", "u1"))
    cache.observe(named_run("deleted", "u2"))
    since = cache.freshness.now()
    changed, gone = cache.replace([named_run("kept", "u1")], since)
    assert (changed, gone) == ([], ["team/deleted"])


def test_a_relist_keeps_what_the_watch_delivered_after_the_list_began() -> None:
    cache = RunCache()
    cache.observe(named_run("deleted-late", "u1"))
    since = cache.freshness.now()
    cache.observe(named_run("created-late", "u2"))  # not in the list, which began before it existed
    cache.forget("team/deleted-late")  # in the list, which began before its deletion
    changed, gone = cache.replace([named_run("deleted-late", "u1")], since)
    assert (changed, gone) == ([], [])
    assert cache.keys() == ["team/created-late"]


def test_a_relist_brings_a_run_of_the_same_name_as_new() -> None:
    cache = RunCache()
    cache.observe(named_run("qwen", "old"))
    changed, gone = cache.replace([named_run("qwen", "new", rv="7")], cache.freshness.now())
    assert (changed, gone) == (["team/qwen"], [])
    assert (cache.run("team/qwen") or {})["metadata"]["uid"] == "new"


def test_a_child_relist_removes_the_children_deleted_in_the_gap_and_names_their_runs() -> None:
    children = Children(WriteLedger())
    children.observe(RAY_JOB, "team/qwen", rayjob("5", uid="collected"))
    since = children.freshness.now()
    children.observe(RAY_JOB, "team/qwen", rayjob("9", uid="created-after-the-list-began"))
    assert children.replace(RAY_JOB, [], since) == {"team/qwen"}
    assert [b["metadata"]["uid"] for b in children.bodies(RAY_JOB, "team/qwen")] == ["created-after-the-list-began"]
    # A child deleted after the list began does not come back with it.
    since = children.freshness.now()
    listed = children.bodies(RAY_JOB, "team/qwen")
    children.gone(RAY_JOB, "team/qwen", listed[0])
    assert children.replace(RAY_JOB, listed, since) == set()
    assert children.bodies(RAY_JOB, "team/qwen") == []


def test_a_run_is_cached_without_the_api_servers_bookkeeping_or_kubectls_copy_of_it() -> None:
    cache = RunCache()
    applied = {"kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 5000 + "}", "team": "rl"}
    body = run("1", annotations=applied, managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}])
    cache.observe(body)
    kept = cache.run("team/qwen") or {}
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "rl"}
    assert len(str(kept)) < len(str(body)) / 10
    cache.wrote(run("2", phase="Starting", managedFields=[{"manager": "loka-operator"}]))
    assert "managedFields" not in (cache.run("team/qwen") or {})["metadata"]


def test_a_child_is_cached_without_kubectls_copy_of_it() -> None:
    children = Children(WriteLedger())
    body = rayjob("5")
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}
    children.observe(RAY_JOB, "team/qwen", body)
    (kept,) = children.bodies(RAY_JOB, "team/qwen")
    assert kept["metadata"]["annotations"] == {"keep": "me"}


def workload(owner_uid: str) -> dict[str, Any]:
    owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "qwen", "uid": owner_uid}
    meta = {"name": "rayjob-qwen-1", "namespace": "team", "uid": f"w-{owner_uid}", "ownerReferences": [owner]}
    return {"metadata": meta, "spec": {"active": True}, "status": {}}


def test_only_the_workload_of_the_runs_own_rayjob_is_cached() -> None:
    children = Children(WriteLedger())
    # Someone else's RayJob named like the run (or any RayJob in the namespace, before the run has one).
    assert children.observe(WORKLOAD, "team/qwen", workload("someone-elses")) is False
    assert children.bodies(WORKLOAD, "team/qwen") == []
    children.observe(RAY_JOB, "team/qwen", rayjob("5", uid="ours"))
    assert children.observe(WORKLOAD, "team/qwen", workload("ours")) is True
    assert [w["metadata"]["uid"] for w in children.bodies(WORKLOAD, "team/qwen")] == ["w-ours"]


def test_the_workload_of_a_rayjob_just_created_is_cached_before_the_rayjobs_watch_event() -> None:
    children = Children(WriteLedger())
    children.wrote(RAY_JOB, "team/qwen", rayjob("5", uid="ours"))
    assert children.observe(WORKLOAD, "team/qwen", workload("ours")) is True


def test_a_source_finds_the_runs_that_name_it_without_reading_the_rest_of_its_namespace() -> None:
    """Each reconcile of a source works out its pins from its dependents: from an index, not a pass over every run
    of the namespace (500 runs launching together made that pass the operator's largest cost)."""
    from loka_operator import lineage

    def named(name: str, **spec: Any) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "team", "resourceVersion": "1"}, "spec": spec, "status": {}}

    cache = RunCache(sources_of=lineage.source_keys_of)
    cache.observe(named("sft"))
    cache.observe(named("grpo", model={"fromRun": {"name": "sft"}}))
    reward = {"components": [{"name": "rm", "rewardModel": {"fromRun": {"name": "rm-run"}}}]}
    cache.observe(named("judged", model={"fromRun": {"name": "sft"}}, reward=reward))
    cache.observe(named("other", model={"uri": "s3://models/base"}))
    cache.wrote(named("late", model={"fromRun": {"name": "sft"}}))  # our own write of a run not yet watched
    assert cache.dependents("team/sft") == ["team/grpo", "team/judged", "team/late"]
    assert cache.dependents("team/rm-run") == ["team/judged"]
    cache.observe(named("grpo", model={"uri": "s3://models/base"}))  # a new spec (recreated under the name)
    cache.forget("team/judged")
    assert cache.dependents("team/sft") == ["team/late"]
    assert cache.dependents("team/rm-run") == []
