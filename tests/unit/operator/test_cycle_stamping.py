"""A RewardCycle's stamping, pure: which TrainingRuns and Evaluations it creates when, how they are chained by name
alone, and what its status says (the real control plane: tests/operator/test_cycles.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from localcluster.tools import REPO
from loka_api import TrainingRun
from loka_api.crd import REWARD_CYCLE_CRD_PATH, build_reward_cycle_crd, render_reward_cycle_crd_yaml
from loka_api.cycle import RewardCycle, Stage, stage_name
from loka_api.evaluation import Evaluation
from loka_operator import naming
from loka_operator.builders.cycle import build_stage
from loka_operator.cycles import CyclePlan, plan_cycle

AT = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
EXAMPLE = REPO / "examples" / "cycle" / "reward-cycle-demo.yaml"


def cycle_body(iterations: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] |= {"name": "c", "namespace": "team", "uid": "cycle-uid", "generation": 1}
    body["spec"]["iterations"] = iterations
    body["spec"] |= spec
    return body


def plan(body: dict[str, Any], stages: dict[str, dict[str, Any]] | None = None) -> CyclePlan:
    return plan_cycle(body, RewardCycle.model_validate(body), stages or {}, at=AT)


def stage(manifest: dict[str, Any], phase: str | None, message: str | None = None) -> dict[str, Any]:
    """A created stage as the cache would hold it, with the phase its own reconciler wrote."""
    body = copy.deepcopy(manifest)
    body["status"] = {k: v for k, v in {"phase": phase, "message": message}.items() if v is not None}
    return body


def names(manifests: list[dict[str, Any]]) -> list[str]:
    return [m["metadata"]["name"] for m in manifests]


def test_the_first_iteration_is_three_stages_owned_by_the_cycle_and_chained_by_name_alone() -> None:
    body = cycle_body()
    rl, evaluation, rm = (build_stage(body, 1, s) for s in (Stage.RL, Stage.EVALUATION, Stage.REWARD_MODEL))

    assert names([rl, evaluation, rm]) == ["c-1-rl", "c-1-eval", "c-1-rm"]
    assert [m["kind"] for m in (rl, evaluation, rm)] == ["TrainingRun", "Evaluation", "TrainingRun"]
    for manifest, which in ((rl, "rl"), (evaluation, "evaluation"), (rm, "rewardModel")):
        meta = manifest["metadata"]
        assert meta["namespace"] == "team"
        assert meta["ownerReferences"] == [naming.cycle_owner_reference("c", "cycle-uid")]
        assert meta["labels"][naming.LABEL_CYCLE] == "c"
        assert meta["labels"][naming.LABEL_CYCLE_ITERATION] == "1"
        assert meta["labels"][naming.LABEL_CYCLE_STAGE] == which
    # The links are the stages' own fields: what a user would write to chain them by hand.
    assert rl["spec"] == body["spec"]["rl"]
    assert evaluation["spec"]["rollouts"] == {"steps": "all", "fromRun": "c-1-rl"}
    assert evaluation["spec"]["output"]["uri"] == "s3://loka/evals/c-1-eval"
    assert rm["spec"]["data"] == {"maxPromptLength": 64, "maxResponseLength": 16, "fromEvaluation": "c-1-eval"}
    # Each is a valid object of its kind.
    TrainingRun.model_validate(rl)
    TrainingRun.model_validate(rm)
    Evaluation.model_validate(evaluation)


def test_a_later_burst_starts_from_the_previous_one_and_adds_the_reward_model_to_its_own_reward() -> None:
    burst = build_stage(cycle_body(3), 2, Stage.RL)["spec"]

    assert burst["model"] == {"fromRun": {"name": "c-1-rl", "checkpoint": "final"}}
    assert burst["reward"] == {
        "components": [
            {"name": "task", "kind": "function", "function": "loka_trainer.rewards.bare_number:compute_score"},
            {
                "name": "rm",
                "kind": "rewardModel",
                "weight": 1.0,
                "rewardModel": {"endpoint": "http://127.0.0.1:39200", "model": "rm", "timeoutSeconds": 10},
            },
        ]
    }
    TrainingRun.model_validate({"spec": burst})
    assert build_stage(cycle_body(3), 3, Stage.RL)["spec"]["model"]["fromRun"]["name"] == "c-2-rl"


def test_replace_rewards_a_later_burst_by_the_reward_model_alone_and_components_are_kept_beside_it() -> None:
    body = cycle_body()
    body["spec"]["reward"]["combine"] = "replace"
    assert [c["name"] for c in build_stage(body, 2, Stage.RL)["spec"]["reward"]["components"]] == ["rm"]

    body = cycle_body()
    own = [{"name": "format", "kind": "formatCompliance", "weight": 0.2}]
    body["spec"]["rl"]["reward"] = {"components": own}
    assert [c["name"] for c in build_stage(body, 2, Stage.RL)["spec"]["reward"]["components"]] == ["format", "rm"]


def test_a_new_cycle_creates_its_first_iteration_at_once_and_waits_saying_which_stage() -> None:
    first = plan(cycle_body())

    assert names(first.create) == ["c-1-rl", "c-1-eval", "c-1-rm"]
    assert first.status.phase == "Pending"
    assert (first.status.iteration, first.status.stage, first.status.stage_phase) == (1, "c-1-rl", "Pending")
    assert [s.name for s in first.status.iterations[0].stages] == ["c-1-rl", "c-1-eval", "c-1-rm"]


def test_the_next_burst_is_created_only_once_the_reward_model_it_follows_succeeded() -> None:
    body = cycle_body()
    rl, ev, rm = (build_stage(body, 1, s) for s in (Stage.RL, Stage.EVALUATION, Stage.REWARD_MODEL))

    running = plan(body, {"c-1-rl": stage(rl, "Succeeded"), "c-1-eval": stage(ev, "Succeeded"),
                          "c-1-rm": stage(rm, "Running")})  # fmt: skip
    assert running.create == []
    assert running.status.phase == "Running"
    assert running.status.message == "iteration 1 of 2: TrainingRun c-1-rm is Running"
    assert [(s.name, s.phase) for s in running.status.iterations[0].stages] == [
        ("c-1-rl", "Succeeded"), ("c-1-eval", "Succeeded"), ("c-1-rm", "Running")]  # fmt: skip

    done = {"c-1-rl": stage(rl, "Succeeded"), "c-1-eval": stage(ev, "Succeeded"), "c-1-rm": stage(rm, "Succeeded")}
    next_burst = plan(body, done)
    assert names(next_burst.create) == ["c-2-rl"]  # the last iteration is its burst alone
    assert (next_burst.status.iteration, next_burst.status.stage) == (2, "c-2-rl")

    finished = plan(body, {**done, "c-2-rl": stage(next_burst.create[0], "Succeeded")})
    assert finished.create == []
    assert finished.status.phase == "Succeeded"
    assert finished.status.completion_time == AT


def test_a_failed_stage_fails_the_cycle_naming_it_and_nothing_more_is_created() -> None:
    body = cycle_body()
    rl = build_stage(body, 1, Stage.RL)

    failed = plan(body, {"c-1-rl": stage(rl, "Failed", "reward function did not import")})

    assert failed.create == []  # not even the missing Evaluation: the cycle stops where it is
    assert failed.status.phase == "Failed"
    assert failed.status.message == "iteration 1: TrainingRun c-1-rl failed: reward function did not import"


def test_a_stage_deleted_after_it_succeeded_is_not_trained_again_and_raising_iterations_resumes() -> None:
    body = cycle_body(iterations=1)
    rl = build_stage(body, 1, Stage.RL)
    succeeded = plan(body, {"c-1-rl": stage(rl, "Succeeded")})
    assert succeeded.status.phase == "Succeeded"

    body["status"] = succeeded.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert plan(body, {}).create == []  # c-1-rl was deleted: its status still says it succeeded

    body["spec"]["iterations"] = 2
    resumed = plan(body, {"c-1-rl": stage(rl, "Succeeded")})
    assert names(resumed.create) == ["c-1-eval", "c-1-rm"]
    assert resumed.status.phase == "Running"
    assert resumed.status.completion_time is None


def test_stage_names_fit_a_run_name_for_the_longest_cycle_name() -> None:
    crd = build_reward_cycle_crd()
    name_rule = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"][0]
    longest = int(name_rule["rule"].split("<=")[1].split("&&")[0])
    assert len(stage_name("c" * longest, 99, Stage.RL)) <= 47


def test_the_crd_is_generated_from_the_models_and_shows_the_stage_in_progress() -> None:
    assert (REPO / REWARD_CYCLE_CRD_PATH).read_text(encoding="utf-8") == render_reward_cycle_crd_yaml()
    columns = [c["name"] for c in build_reward_cycle_crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Phase", "Iteration", "Of", "Stage", "Stage-Phase", "Age", "Message"]


@pytest.mark.parametrize("example", sorted((REPO / "examples" / "cycle").glob("reward-cycle*.yaml")), ids=str)
def test_the_examples_stamp_valid_stages(example: Any) -> None:
    body = yaml.safe_load(example.read_text())
    body["metadata"] |= {"uid": "u"}
    spec = RewardCycle.model_validate(body).spec
    for iteration in range(1, spec.iterations + 1):
        for each in (Stage.RL, Stage.EVALUATION, Stage.REWARD_MODEL):
            manifest = build_stage(body, iteration, each)
            (Evaluation if each is Stage.EVALUATION else TrainingRun).model_validate(manifest)


def test_without_an_endpoint_a_later_burst_is_rewarded_by_the_reward_model_before_it_served_by_the_operator() -> None:
    body = cycle_body(3)
    body["spec"]["reward"]["rewardModel"] = {"model": "rm", "serving": {"gpus": 1}}
    RewardCycle.model_validate(body)

    for iteration in (2, 3):
        burst = build_stage(body, iteration, Stage.RL)
        (component,) = [c for c in burst["spec"]["reward"]["components"] if c["kind"] == "rewardModel"]
        previous = stage_name("c", iteration - 1, Stage.REWARD_MODEL)
        assert component["rewardModel"] == {
            "model": "rm",
            "serving": {"gpus": 1},
            "fromRun": {"name": previous, "checkpoint": "final"},
        }
        TrainingRun.model_validate(burst)
