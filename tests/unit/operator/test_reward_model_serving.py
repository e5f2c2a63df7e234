"""A reward model given by fromRun: the operator serves it (Deployment, Service, quota in the RayJob) for the run,
after the run's status records the source checkpoint, and the trainer's component calls the Service."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from loka_api import TrainingRun, secret_routes
from loka_api.recipes.grpo import reward_rubric, rubric_json
from loka_api.reward_models import served_url, service_name
from loka_operator import naming
from loka_operator.builders import RayJobSettings, build_network_policy, build_rayjob
from loka_operator.builders.reward_model import (
    build_reward_model_deployments,
    build_reward_model_services,
    reward_model_quota_groups,
)
from loka_operator.cache import Children, WriteLedger
from loka_operator.children import CHILDREN, ENVIRONMENT_SERVER, REWARD_MODEL_SERVER, REWARD_MODEL_SERVICE
from loka_operator.config import OperatorConfig
from loka_operator.handlers import child_selectors, watch_selectors
from loka_operator.lineage import Marker, SourceWaiters, pins_of, resolve
from loka_operator.lineage import reward_model_sources as sources_of
from loka_operator.status import Observed, RewardModelState, calculate_status
from loka_operator.validation import validate_spec
from tests.unit.operator.test_builders import UID, make_spec

NS = "team-a"
CKPT = "s3://ckpt/runs"
RM_CHECKPOINT = f"{CKPT}/{NS}/rm-1/uid-rm/global_step_20"
ADMITTED = {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": "2026-12-07T00:00:00Z"}
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def components(serving: dict[str, Any] | None = None, checkpoint: str = "final") -> list[dict[str, Any]]:
    rm: dict[str, Any] = {"fromRun": {"name": "rm-1", "checkpoint": checkpoint}, "model": "prefs"}
    if serving is not None:
        rm["serving"] = serving
    return [
        {"name": "correct", "kind": "function", "function": "loka_trainer.rewards.gsm8k:compute_score"},
        {"name": "pref_rm", "kind": "rewardModel", "weight": 0.5, "rewardModel": rm},
        {"name": "given", "kind": "rewardModel", "rewardModel": {"endpoint": "http://rm.models:8000"}},
    ]


def run_with(status: dict[str, Any] | None = None, serving: dict[str, Any] | None = None, **spec: Any) -> TrainingRun:
    body = make_spec(reward={"components": components(serving)}, checkpoints={"uri": CKPT}, **spec)
    return TrainingRun.model_validate(
        {
            "metadata": {"name": "grpo-2", "namespace": NS, "uid": UID, "generation": 1},
            "spec": body.model_dump(by_alias=True, exclude_none=True),
            "status": status or {},
        }
    )


RECORDED = {"component": "pref_rm", "run": "rm-1", "uid": "uid-rm", "step": 20, "uri": RM_CHECKPOINT}


def served_run(status: dict[str, Any] | None = None, **kw: Any) -> TrainingRun:
    return run_with({"rewardModels": [RECORDED], **(status or {})}, **kw)


def test_nothing_is_served_before_the_status_records_the_source_checkpoint() -> None:
    run = run_with({"conditions": [ADMITTED]})
    assert build_reward_model_deployments(run, OperatorConfig()) == []
    assert build_reward_model_services(run, OperatorConfig()) == []
    assert reward_model_quota_groups(run) == []


def test_a_recorded_source_is_served_by_a_deployment_and_service_owned_by_the_run() -> None:
    run = served_run({"conditions": [ADMITTED]})
    (deployment,) = build_reward_model_deployments(run, OperatorConfig())
    (service,) = build_reward_model_services(run, OperatorConfig())
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "grpo-2-rm-pref-rm"
    for child in (deployment, service):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("TrainingRun", "grpo-2", UID, True)
        assert child["metadata"]["labels"][naming.LABEL_COMPONENT] == naming.REWARD_MODEL_COMPONENT
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"] == service["spec"]["selector"]
    assert deployment["spec"]["replicas"] == 1
    (stage,) = pod["spec"]["initContainers"]
    assert RM_CHECKPOINT in stage["command"] and "--stage-only" in stage["command"]
    (server,) = pod["spec"]["containers"]
    assert server["command"][:3] == ["python", "-m", "loka_trainer.rm_server"]
    assert server["command"][-2:] == ["--name", "prefs"], "answers to the component's model name"
    assert server["image"] == stage["image"] == run.spec.image
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["ports"][0]["port"] == server["ports"][0]["containerPort"] == 8000
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in (stage, server))


def test_only_the_staging_container_holds_the_s3_credentials_by_reference() -> None:
    (deployment,) = build_reward_model_deployments(served_run(), OperatorConfig())
    pod = deployment["spec"]["template"]["spec"]
    (stage,), (server,) = pod["initContainers"], pod["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in stage["env"] if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "loka-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "loka-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.minio:9000"} in stage["env"]
    assert not any("valueFrom" in e for e in server.get("env", [])), "the serving container gets no secret"
    uses = secret_routes.of_run(run_with().spec)
    assert secret_routes.Holder.REWARD_MODEL_STAGER in {h for u in uses for h in u.holders}
    no_served = make_spec(reward={"components": components()[:1]})
    assert not secret_routes.env_for(secret_routes.of_run(no_served), secret_routes.Holder.REWARD_MODEL_STAGER)


def test_with_gpus_the_server_is_vllms_pooling_runner_on_the_runs_gpu_nodes() -> None:
    run = served_run(serving={"gpus": 1, "cpu": "4", "memory": "24Gi", "image": "vllm/vllm-openai:v0.11.0"})
    (deployment,) = build_reward_model_deployments(run, OperatorConfig())
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == "vllm/vllm-openai:v0.11.0"
    assert server["command"][:4] == ["vllm", "serve", "/models/rm", "--runner"] and "pooling" in server["command"]
    assert server["resources"]["limits"] == {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"}
    (stage,) = pod["initContainers"]
    assert "nvidia.com/gpu" not in stage["resources"]["limits"], "staging needs no GPU"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_trainer_calls_the_served_model_at_its_services_cluster_address() -> None:
    run = served_run()
    (service,) = build_reward_model_services(run, OperatorConfig())
    assert served_url("grpo-2", NS, "pref_rm") == f"http://{service['metadata']['name']}.{NS}.svc:8000"
    rubric = reward_rubric(run.spec, run="grpo-2", namespace=NS)
    assert rubric is not None
    by_name = {c["name"]: c for c in json.loads(rubric_json(rubric))}
    assert by_name["pref_rm"]["rewardModel"]["endpoint"] == served_url("grpo-2", NS, "pref_rm")
    assert by_name["given"]["rewardModel"]["endpoint"] == "http://rm.models:8000", "a given endpoint stays"


def test_only_the_runs_own_pods_reach_the_served_model() -> None:
    (deployment,) = build_reward_model_deployments(served_run(), OperatorConfig())
    policy = build_network_policy("grpo-2", NS, UID, kuberay_namespace="ray-system")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": naming.run_pods_selector("grpo-2")}]


def test_the_server_runs_only_while_kueue_holds_its_quota() -> None:
    def replicas(run: TrainingRun) -> int:
        (deployment,) = build_reward_model_deployments(run, OperatorConfig())
        return int(deployment["spec"]["replicas"])

    assert replicas(served_run()) == 0, "queued, not admitted"
    assert replicas(served_run({"conditions": [ADMITTED]}, serving={"replicas": 2})) == 2
    assert replicas(served_run({"conditions": [ADMITTED], "phase": "Succeeded"})) == 0
    assert replicas(served_run(queue=None)) == 1, "no queue: nothing to wait for"


def test_the_runs_kueue_workload_counts_the_server_through_a_suspended_worker_group() -> None:
    run = served_run(serving={"gpus": 1})
    groups = reward_model_quota_groups(run)
    job = build_rayjob(
        run.spec,
        run="grpo-2",
        namespace=NS,
        uid=UID,
        settings=RayJobSettings(),
        reward_model_groups=groups,
    )
    by_name = {g["groupName"]: g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    quota = by_name[naming.reward_model_quota_group("pref_rm")]
    assert quota["groupName"] == "rm-pref-rm"
    assert quota["suspend"] is True, "KubeRay starts no pod for it: the Deployment's pods are the server"
    assert quota["replicas"] == quota["minReplicas"] == quota["maxReplicas"] == 1
    (server,) = quota["template"]["spec"]["containers"]
    assert server["resources"]["requests"]["nvidia.com/gpu"] == "1"


def test_a_queued_run_may_serve_no_more_models_and_servers_than_a_workload_has_pod_sets_for() -> None:
    rms = [{"name": f"rm{i}", "kind": "rewardModel", "rewardModel": {"fromRun": {"name": "rm-1"}}} for i in range(4)]
    servers = [{"name": f"s{i}", "run": {"image": "ghcr.io/acme/env:1"}} for i in range(2)]
    problem = validate_spec(make_spec(reward={"components": rms}, environment={"servers": servers}))
    assert problem is not None and problem.reason == "InvalidRewardModels"
    assert "4 reward models served" in problem.message and "at most 5" in problem.message
    fits = validate_spec(make_spec(reward={"components": rms}, environment={"servers": servers[:1]}))
    assert fits is None or fits.reason != "InvalidRewardModels"


def test_a_service_name_fits_63_characters_and_stays_distinct() -> None:
    names = {service_name("r" * 47, component) for component in ("a" * 30, "b" * 30)}
    assert all(len(name) <= 63 and name[0].isalpha() for name in names)
    assert len(names) == 2
    assert service_name("grpo-2", "pref_rm") == "grpo-2-rm-pref-rm"


def test_the_served_models_are_children_declared_once_and_watched_beside_the_environment_servers() -> None:
    assert {REWARD_MODEL_SERVER, REWARD_MODEL_SERVICE} <= set(CHILDREN)
    assert REWARD_MODEL_SERVER.kind == ENVIRONMENT_SERVER.kind, "one Kubernetes kind, two entries"
    selectors = child_selectors(OperatorConfig())
    watched = watch_selectors(selectors)[REWARD_MODEL_SERVER.kind.gvr]
    assert watched.endswith(
        f"{naming.LABEL_COMPONENT} in ({naming.ENVIRONMENT_COMPONENT},{naming.REWARD_MODEL_COMPONENT})"
    )
    # Each entry's own LIST (the startup prime, a relist) keeps to its own component.
    assert selectors[REWARD_MODEL_SERVER] != selectors[ENVIRONMENT_SERVER]


def test_a_relist_of_the_environment_servers_leaves_the_served_models_cached() -> None:
    children = Children(WriteLedger())
    run = served_run()
    (served,) = build_reward_model_deployments(run, OperatorConfig())
    served["metadata"] |= {"uid": "d-rm", "resourceVersion": "1"}
    children.observe(REWARD_MODEL_SERVER, f"{NS}/grpo-2", served)
    since = children.freshness.now()
    children.replace(ENVIRONMENT_SERVER, [], since)  # no environment server exists: its LIST is empty
    assert [b["metadata"]["uid"] for b in children.bodies(REWARD_MODEL_SERVER, f"{NS}/grpo-2")] == ["d-rm"]


# ------------------------------------------------------------------------------------------------- lineage


def rm_source(phase: str = "Succeeded", step: int | None = 20, uid: str = "uid-rm") -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "rm-1", "namespace": NS, "uid": uid},
        "spec": {
            "algorithm": "rm",
            "engine": "trl",
            "image": "img",
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
            "data": {"train": "s3://d/prefs.jsonl"},
            "checkpoints": {"uri": CKPT, "every": 10},
            "storage": {"endpoint": "http://minio.minio:9000", "credentialsSecret": "loka-s3"},
        },
        "status": {"phase": phase},
    }
    if step is not None:
        body["status"]["checkpoint"] = {"step": step, "uri": f"{CKPT}/{NS}/rm-1/{uid}/global_step_{step}"}
    return body


def test_the_run_waits_for_the_rm_runs_final_checkpoint_which_its_marker_names() -> None:
    run = run_with()
    ((component, which),) = sources_of(run)
    assert component == "pref_rm"
    running = resolve(run, rm_source("Running"), lookup=lambda _: None, which=which)
    assert running.waiting is not None and running.waiting.reason == "WaitingForSource"
    final = resolve(run, rm_source(), lookup=lambda _: None, which=which, marker=Marker(20))
    assert final.ready and final.source.uri == RM_CHECKPOINT
    gone = resolve(run, None, lookup=lambda _: None, which=which)
    assert gone.waiting is not None and "rewardModel.fromRun" in gone.waiting.message


def test_the_served_checkpoint_is_recorded_then_the_run_launches_and_fails_when_the_source_fails() -> None:
    run = run_with()
    ((component, which),) = sources_of(run)
    ready = resolve(run, rm_source(), lookup=lambda _: None, which=which, marker=Marker(20))
    obs = Observed(
        generation=1, suspend=False, queued=True, now=NOW, reward_models=(RewardModelState(component, ready),)
    )
    update = calculate_status(obs, run.status)
    assert update.status.phase == "Pending" and update.changes["rewardModels"] == [RECORDED]
    ready_condition = next(c for c in update.status.conditions if c.type == "RewardModelsReady")
    assert ready_condition.status == "True"
    assert "pref_rm: step 20 of run 'rm-1'" in (update.status.message or "")
    failed = resolve(run, rm_source("Failed", step=None), lookup=lambda _: None, which=which)
    obs = Observed(
        generation=1, suspend=False, queued=True, now=NOW, reward_models=(RewardModelState(component, failed),)
    )
    assert calculate_status(obs, run.status).status.phase == "Failed"


def test_the_served_checkpoint_stays_pinned_while_the_dependent_runs() -> None:
    source = TrainingRun.model_validate(rm_source())
    dependent: dict[str, Any] = {
        "metadata": {"name": "grpo-2", "namespace": NS, "uid": UID},
        "spec": {"reward": {"components": components()}},
        "status": {"phase": "Running", "checkpoint": {"step": 50}, "rewardModels": [RECORDED]},
    }
    (pin,) = pins_of(source, [dependent])
    assert (pin.step, pin.run, pin.uid) == (20, "grpo-2", UID), "its own checkpoints do not release it"
    dependent["status"]["phase"] = "Succeeded"
    assert pins_of(source, [dependent]) == []


def test_a_run_waits_on_several_sources_and_each_wakes_it() -> None:
    waiters = SourceWaiters()
    waiters.wait("ns/grpo-2", "ns/sft", "ns/rm-1")
    assert waiters.dependents("ns/rm-1") == waiters.dependents("ns/sft") == ["ns/grpo-2"]
    waiters.wait("ns/grpo-2")
    assert waiters.dependents("ns/rm-1") == []
