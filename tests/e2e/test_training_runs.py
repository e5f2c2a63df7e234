"""End to end: TrainingRuns through the operator, Kueue, KubeRay, a real Ray and the trainer (GRPO on CPU)."""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import yaml

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.demo import checkpoint_keys, demo_manifest, s3_client
from localcluster.stack import OPERATOR_METRICS_PORT, DemoStack

PRIORITY_CLASSES = {"loka-e2e-low": 100, "loka-e2e-high": 10000}
# The preempted run's length: it reaches about step 8 when preempted and 13 to 17 when suspended (status shows a
# step up to 10 s late), so it is still training at both; each step past those costs the suite about a second.
LOW_STEPS = 36


def run_manifest(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """The demo run, resized for one e2e queue (4 CPUs) and pointed at the e2e model and data."""
    manifest = copy.deepcopy(demo_manifest())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    run = manifest["spec"]
    run["model"]["uri"] = "s3://loka/e2e/model"
    run["data"]["train"] = "s3://loka/e2e/data/train.parquet"
    run["data"]["validation"] = "s3://loka/e2e/data/validation.parquet"
    run["resources"] = {"workers": 1, "gpusPerWorker": 0, "head": {"cpu": "1", "memory": "2Gi"},
                        "worker": {"cpu": "2", "memory": "2Gi"}}  # fmt: skip
    run["queue"] = {"name": "e2e", "clusterQueue": namespace}
    run.pop("ttlSecondsAfterFinished", None)
    for key, value in spec.items():
        run[key] = {**run[key], **value} if isinstance(value, dict) and isinstance(run.get(key), dict) else value
    return manifest


@dataclass
class RunWatch:
    """Polls one TrainingRun; remembers every phase, attempt and step it was seen at."""

    cluster: LocalCluster
    namespace: str
    name: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        out = self.cluster.kubectl("-n", self.namespace, "get", "trainingrun", self.name, "-o", "json").stdout
        status: dict[str, Any] = json.loads(out).get("status") or {}
        self.seen.append(status)
        return status

    def until(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float, what: str, after_end: bool = False
    ) -> dict[str, Any]:
        """Poll until ``predicate`` holds; a run that finished first fails the wait, unless ``after_end`` (what the
        trainer still reports once the phase turned, such as its save on the way out)."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            if status.get("phase") in ("Succeeded", "Failed") and not after_end:
                break
            time.sleep(0.5)
        pytest.fail(
            f"{self.name}: timed out or finished waiting for {what}; last status:\n{yaml.safe_dump(status)}\n"
            f"the stack:\n{DemoStack(self.cluster).diagnosis()}"
        )


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> RunWatch:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    return RunWatch(cluster, manifest["metadata"]["namespace"], manifest["metadata"]["name"])


def set_suspend(watch: RunWatch, suspend: bool) -> None:
    """What `loka suspend` and `loka resume` do: set spec.suspend."""
    patch = json.dumps({"spec": {"suspend": suspend}})
    watch.cluster.kubectl("-n", watch.namespace, "patch", "trainingrun", watch.name, "--type=merge", "-p", patch)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_a_run_trains_to_success_with_live_progress_and_a_complete_checkpoint_in_minio(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str
) -> None:
    manifest = run_manifest(e2e_namespace, "grpo", training={"maxSteps": 4}, checkpoints={"every": 2})
    watch = apply(cluster, manifest)

    running = watch.until(lambda s: s.get("phase") == "Running", timeout=120, what="phase Running")
    assert running.get("rayJob") and running.get("attempt") == 1
    final = watch.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="phase Succeeded")

    assert final["progress"]["step"] == final["progress"]["totalSteps"] == 4
    assert final["metrics"]["rewardMean"] is not None
    assert final["checkpoint"]["step"] == 4
    uid = json.loads(cluster.kubectl("-n", e2e_namespace, "get", "trainingrun", "grpo", "-o", "json").stdout)
    assert final["checkpoint"]["uri"].endswith(f"/{e2e_namespace}/grpo/{uid['metadata']['uid']}/global_step_4")
    assert condition(final, "Succeeded").get("status") == "True"
    assert final.get("completionTime")

    keys = checkpoint_keys(cluster, manifest)
    prefix = final["checkpoint"]["uri"].removeprefix(f"s3://{S3_BUCKET}/") + "/"
    manifest_key = prefix + "loka-manifest.json"
    assert manifest_key in keys, keys
    s3 = s3_client(cluster)
    checkpoint_manifest = json.loads(s3.get_object(Bucket=S3_BUCKET, Key=manifest_key)["Body"].read())
    stored = {k.removeprefix(prefix): s3.head_object(Bucket=S3_BUCKET, Key=k)["ContentLength"]
              for k in keys if k.startswith(prefix) and k != manifest_key}  # fmt: skip
    listed = {f["path"]: f["size"] for f in checkpoint_manifest["files"]}
    assert listed == stored, "the manifest lists exactly the files in MinIO, with their sizes"
    latest = s3.get_object(Bucket=S3_BUCKET, Key=prefix.rsplit("/global_step_", 1)[0] + "/latest")
    marker = json.loads(latest["Body"].read())
    assert (marker["step"], marker["uri"]) == (4, final["checkpoint"]["uri"]), "latest names the final checkpoint"


@pytest.fixture
def priority_classes(cluster: LocalCluster) -> None:
    docs = [{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": name},
             "value": value} for name, value in PRIORITY_CLASSES.items()]  # fmt: skip
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))


def test_a_preempted_run_with_an_explicit_resume_continues_from_its_own_latest_checkpoint(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, priority_classes: None
) -> None:
    seed = apply(cluster, run_manifest(e2e_namespace, "seed", training={"maxSteps": 2}, checkpoints={"every": 2}))
    seeded = seed.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the seed run to finish")
    seed_uri = seeded["checkpoint"]["uri"]

    low = apply(cluster, run_manifest(
        e2e_namespace, "low", training={"maxSteps": LOW_STEPS}, checkpoints={"every": 4, "resume": seed_uri},
        queue={"name": "e2e", "clusterQueue": e2e_namespace, "priorityClass": "loka-e2e-low"},
    ))  # fmt: skip
    low.until(lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 4, timeout=300, what="a first checkpoint")
    said = [st.get("message") or "" for st in low.seen]
    assert any(m.startswith(f"resumed from checkpoint step 2 ({seed_uri.rsplit('/', 1)[0]})") for m in said), said

    high = apply(cluster, run_manifest(
        e2e_namespace, "high", training={"maxSteps": 2}, checkpoints={"every": 2},
        queue={"name": "e2e", "clusterQueue": e2e_namespace, "priorityClass": "loka-e2e-high"},
    ))  # fmt: skip
    suspended = low.until(lambda s: s.get("phase") == "Suspended", timeout=120, what="preemption")
    reason = condition(suspended, "Suspended")
    assert reason.get("status") == "True", suspended
    assert "preempt" in (reason.get("message", "") + reason.get("reason", "")).lower(), reason
    saved = (suspended.get("checkpoint") or {}).get("step")
    assert saved and saved >= 2

    high.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the high-priority run to finish")
    low.until(lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", timeout=300,
              what="the low-priority run to be admitted again")  # fmt: skip
    reached = suspend_and_resume(low, attempt=2)
    final = low.until(lambda s: s.get("phase") == "Succeeded", timeout=900, what="the resumed run to finish")

    # The preempted trainer may still finish a checkpoint while it stops: resume picks the newest complete one.
    said = [st.get("message") or "" for st in low.seen if st.get("attempt") == 2]
    resumes = [int(m.split()[4]) for m in said if m.startswith("resumed from checkpoint step")]
    assert resumes, f"attempt 2 never said where it resumed from: {said}"
    resumed_from = resumes[0]
    assert resumed_from >= saved, f"resumed from {resumed_from}, older than checkpoint {saved} seen at preemption"
    first = next(
        i for i, st in enumerate(low.seen)
        if st.get("attempt") == 2 and (st.get("message") or "").startswith("resumed from")
    )  # fmt: skip
    named = low.seen[first].get("checkpoint") or {}
    assert named.get("step") == resumed_from, f"status names checkpoint {named} while it resumes from {resumed_from}"
    own = named.get("uri", "")
    assert own.startswith(f"s3://{S3_BUCKET}/checkpoints/{e2e_namespace}/low/"), "the run's own, not the seed"

    for st in low.seen:  # status never shows progress behind its own checkpoint
        step, checkpoint = (st.get("progress") or {}).get("step"), (st.get("checkpoint") or {}).get("step")
        if step is not None and checkpoint is not None:
            assert step >= checkpoint, st
    after = [st["progress"]["step"] for st in low.seen[first:] if (st.get("progress") or {}).get("step") is not None]
    assert min(after) >= resumed_from, f"the step went back past checkpoint {resumed_from}: {after}"
    assert final["progress"]["step"] == LOW_STEPS
    assert final.get("attempt") == 3

    assert_saved_on_the_way_out(low, final, resumed_from=resumed_from, reached_at_suspension=reached)


def suspend_and_resume(watch: RunWatch, *, attempt: int) -> int:
    """A user suspends the run once its attempt trained past the step it resumed from (spec.suspend, as `loka
    suspend` sets it), then resumes it. The step status showed when it was suspended."""

    def trained_on(s: dict[str, Any]) -> bool:
        progress = s.get("progress") or {}
        return progress.get("attempt") == attempt and progress.get("step", 0) > progress.get("resumedFrom", 1e9)

    watch.until(trained_on, timeout=300, what=f"attempt {attempt} to train past the step it resumed from")
    set_suspend(watch, True)
    paused = watch.until(lambda s: s.get("phase") == "Suspended", timeout=120, what="the suspension")
    assert condition(paused, "Suspended").get("reason") == "Suspended", paused
    reached = int(max((st.get("progress") or {}).get("step", 0) for st in watch.seen))
    set_suspend(watch, False)
    watch.until(lambda s: s.get("attempt") == attempt + 1 and s.get("phase") == "Running", timeout=300,
                what="the suspended run to run again")  # fmt: skip
    return reached


def assert_saved_on_the_way_out(
    watch: RunWatch, final: dict[str, Any], *, resumed_from: int, reached_at_suspension: int
) -> None:
    """Attempt 2 started where attempt 1 was when Kueue preempted it (the step it had reported, or the one in
    flight), not at its last periodic checkpoint, and attempt 3 where attempt 2 was when the user suspended it
    (checkpoints.every is 4: a periodic checkpoint alone would lose up to 3 steps each time). Status, metrics and
    totals say what each cost."""
    reached = reached_at_suspension
    preemption, suspension = final["interruptions"]
    assert preemption["reason"].startswith("Preempted"), preemption
    assert (preemption["attempt"], preemption["resumedFrom"]) == (1, resumed_from), preemption
    assert resumed_from >= preemption["stepReached"] and preemption["stepsLost"] == 0, preemption
    assert preemption["runningAgainAfterSeconds"] > 0
    assert (suspension["attempt"], suspension["reason"]) == (2, "Suspended"), suspension
    assert suspension["resumedFrom"] >= reached > resumed_from, (suspension, reached)
    assert suspension["stepsLost"] == 0 and suspension["runningAgainAfterSeconds"] > 0, suspension
    resumed_again = [st for st in watch.seen if (st.get("progress") or {}).get("attempt") == 3]
    assert min(st["progress"]["step"] for st in resumed_again) >= suspension["resumedFrom"], "no step went back"
    totals = final["interruptionTotals"]
    assert (totals["count"], totals["stepsLost"], totals["gpuHoursLost"]) == (2, 0, 0.0), totals
    assert totals["secondsStopped"] >= preemption["runningAgainAfterSeconds"] + suspension["runningAgainAfterSeconds"]
    with urllib.request.urlopen(f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics", timeout=10) as response:
        exported = response.read().decode()
    counted = dict(re.findall(r'loka_run_interruptions_total\{queue="e2e",reason="([^"]*)"\} (\S+)', exported))
    assert any(r.startswith("Preempted") and float(n) >= 1 for r, n in counted.items()), exported[-2000:]
    assert float(counted.get("Suspended", 0)) >= 1, exported[-2000:]


def test_a_deadline_ends_the_run_failed_with_a_final_checkpoint_of_the_step_it_was_on(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str
) -> None:
    # No periodic checkpoint before the deadline (every 1000): what S3 holds at the end is the save on the way out.
    # The trainer takes its first step 12 s after the run starts (CPU, the e2e model) on a quiet machine, 47 s on
    # one loaded 4-fold (a 45 s deadline then ended the run before it trained); the default grace period (60 s)
    # leaves it 37 s to end its step and save (0.5 s here). Status may show no step before the deadline (the
    # trainer reports every 10 s, late under load): the save proves the run trained.
    limit = 75
    manifest = run_manifest(
        e2e_namespace, "deadline", training={"maxSteps": 5000}, checkpoints={"every": 1000},
        deadline={"seconds": limit},
    )  # fmt: skip
    watch = apply(cluster, manifest)
    failed = watch.until(lambda s: s.get("phase") == "Failed", timeout=limit + 120, what="the deadline to end it")
    ended = condition(failed, "Failed")
    assert ended.get("reason") == "DeadlineExceeded", failed
    assert f"spec.deadline.seconds {limit}" in ended.get("message", ""), ended
    started = datetime.fromisoformat(failed["startTime"].replace("Z", "+00:00"))
    stopped = datetime.fromisoformat(failed["completionTime"].replace("Z", "+00:00"))
    assert limit <= (stopped - started).total_seconds() < limit + 30, (started, stopped)

    # The trainer saved the step it was on before its Ray job ended: the marker names that checkpoint, complete.
    saved = watch.until(
        lambda s: bool((s.get("checkpoint") or {}).get("step")), timeout=60, what="the final checkpoint", after_end=True
    )
    step = saved["checkpoint"]["step"]
    assert step >= max((st.get("progress") or {}).get("step", 0) for st in watch.seen) >= 1, saved
    keys = checkpoint_keys(cluster, manifest)
    prefix = saved["checkpoint"]["uri"].removeprefix(f"s3://{S3_BUCKET}/")
    assert f"{prefix}/loka-manifest.json" in keys, keys
    marker = json.loads(
        s3_client(cluster)
        .get_object(Bucket=S3_BUCKET, Key=prefix.rsplit("/global_step_", 1)[0] + "/latest")["Body"]
        .read()
    )
    assert marker["step"] == step
    assert condition(watch.status(), "Failed").get("reason") == "DeadlineExceeded", "the reason stays"


def test_a_bad_reward_function_fails_the_run_with_the_trainers_error_after_max_restarts(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str
) -> None:
    watch = apply(cluster, run_manifest(
        e2e_namespace, "bad-reward", reward={"function": "loka_trainer.rewards.nowhere:compute_score"},
        maxRestarts=1,
    ))  # fmt: skip
    final = watch.until(lambda s: s.get("phase") == "Failed", timeout=600, what="phase Failed")
    assert "loka_trainer.rewards.nowhere" in final.get("message", ""), final.get("message")
    assert final.get("attempt") == 2, "maxRestarts: 1 allows one retry before the run fails"
    assert condition(final, "Failed").get("status") == "True"


def test_a_run_deleted_and_created_again_starts_from_scratch(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str
) -> None:
    manifest = run_manifest(e2e_namespace, "again", training={"maxSteps": 2}, checkpoints={"every": 2})
    first = apply(cluster, manifest)
    before = first.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the first run to finish")
    cluster.kubectl("-n", e2e_namespace, "delete", "trainingrun", "again", "--wait=true")

    def old_children_gone() -> bool:  # garbage collection of the deleted run's RayJob
        out = cluster.kubectl("-n", e2e_namespace, "get", "rayjobs", "-o", "name").stdout
        return not out.strip()

    deadline = time.monotonic() + 120
    while not old_children_gone():
        assert time.monotonic() < deadline, "the deleted run's RayJob is still there"
        time.sleep(0.5)

    second = apply(cluster, manifest)  # the same name, a new uid
    after = second.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the new run to finish")

    said = [st.get("message") or "" for st in second.seen]
    assert not [m for m in said if m.startswith("resumed from")], f"the new run resumed the old one's weights: {said}"
    assert after["checkpoint"]["step"] == 2
    assert after["checkpoint"]["uri"] != before["checkpoint"]["uri"]
    keys = checkpoint_keys(cluster, manifest)
    for uri in (before["checkpoint"]["uri"], after["checkpoint"]["uri"]):
        key = uri.removeprefix(f"s3://{S3_BUCKET}/") + "/loka-manifest.json"
        assert key in keys, f"{uri} is not complete in MinIO: the new run pruned its predecessor's checkpoint"
