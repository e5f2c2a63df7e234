"""The TrainingRun health check, run from argo-cd's own test layout under ArgoCD's Lua sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.tools import REPO
from loka_api import RunPhase
from loka_api.cycle import CYCLE_ARGOCD_HEALTH, CyclePhase
from loka_api.phases import ARGOCD_HEALTH
from tests.deploy.argocd_lua import LuaError, run_health
from tests.deploy.cycle_health_scenarios import EXPECTED as CYCLE_EXPECTED
from tests.deploy.cycle_health_scenarios import SCENARIOS as CYCLE_SCENARIOS
from tests.deploy.gitops import APPLICATION_HEALTH, CHECKED_KINDS, health_scripts
from tests.deploy.health_scenarios import SCENARIOS, run_with

CHECK = REPO / "gitops" / "argocd" / "health" / "loka.dev" / "TrainingRun"
SCRIPT = (CHECK / "health.lua").read_text()
CASES: list[dict[str, Any]] = yaml.safe_load((CHECK / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_matches_argo_test_case(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECK / case["inputPath"]).read_text())
    assert run_health(SCRIPT, obj) == case["healthStatus"]


def test_every_testdata_file_has_a_case_and_every_status_is_covered() -> None:
    listed = {c["inputPath"] for c in CASES}
    on_disk = {f"testdata/{p.name}" for p in (CHECK / "testdata").glob("*.yaml")}
    assert listed == on_disk
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Suspended", "Degraded"}
    assert {c["healthStatus"]["status"] for c in CASES} <= ARGO_STATUSES


def _running() -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((CHECK / "testdata" / "running.yaml").read_text())
    return obj


def test_unknown_phase_is_reported_not_hidden() -> None:
    obj = _running()
    obj["status"]["phase"] = "Exploded"
    assert run_health(SCRIPT, obj) == {"status": "Unknown", "message": "Unknown phase Exploded"}


def test_failed_condition_wins_over_a_running_phase() -> None:
    obj = _running()
    failed = next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")
    failed.update({"status": "True", "reason": "CheckpointCorrupt", "message": "global_step_100 is torn"})
    assert run_health(SCRIPT, obj) == {"status": "Degraded", "message": "CheckpointCorrupt: global_step_100 is torn"}


def test_running_without_progress_yet_says_training() -> None:
    obj = _running()
    del obj["status"]["progress"]
    del obj["status"]["metrics"]
    assert run_health(SCRIPT, obj) == {"status": "Progressing", "message": "Training"}


@pytest.mark.parametrize(
    "snippet",
    [
        'return {status = string.format("%s", "Healthy")}',
        "return {status = math.floor(1)}",
        'return {status = ("x"):upper()}',
    ],
)
def test_sandbox_refuses_what_argocd_refuses(snippet: str) -> None:
    with pytest.raises(LuaError):
        run_health(snippet, {})


def _embedded_checks(kind: str) -> dict[str, str]:
    cm = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm-health.yaml").read_text())
    openshift = yaml.safe_load((REPO / "gitops" / "openshift" / "argocd-resource-health.yaml").read_text())
    found = {"argocd-cm": cm["data"][f"resource.customizations.health.loka.dev_{kind}"]}
    for check in openshift["spec"]["resourceHealthChecks"]:
        if (check["group"], check["kind"]) == ("loka.dev", kind):
            found["ArgoCD CR"] = check["check"]
    return found


@pytest.mark.parametrize("kind", CHECKED_KINDS)
def test_argocd_cm_and_openshift_gitops_carry_the_same_script(kind: str) -> None:
    embedded = _embedded_checks(kind)
    assert set(embedded) == {"argocd-cm", "ArgoCD CR"}
    for where, script in embedded.items():
        assert script == health_scripts()[kind], f"{where} differs from {kind}'s health.lua: run `make gitops-health`"


def test_application_health_for_app_of_apps_waves_runs_in_the_sandbox() -> None:
    app = {"status": {"health": {"status": "Degraded", "message": "one child failed"}}}
    assert run_health(APPLICATION_HEALTH, app) == {"status": "Degraded", "message": "one child failed"}
    assert run_health(APPLICATION_HEALTH, {}) == {"status": "Progressing", "message": ""}


# What ArgoCD should say about a run in each state, whatever the exact words.
EXPECTED_HEALTH = {
    "no-status": "Progressing",
    "stale-generation": "Progressing",
    "pending": "Progressing",
    "missing-secret": "Degraded",
    "invalid-spec": "Degraded",
    "cannot-launch": "Degraded",  # a person must act: nothing Loka retries will fix it
    "queued": "Suspended",
    "starting": "Progressing",
    "running": "Progressing",
    "preempted": "Suspended",
    "resuming": "Progressing",
    "suspended": "Suspended",
    "succeeded": "Healthy",
    "failed": "Degraded",
}


@pytest.mark.parametrize("state", sorted(EXPECTED_HEALTH))
def test_health_of_the_status_the_operator_calculates_now(state: str) -> None:
    # Fresh from the operator's status calculator, so a change there that the check misreads fails here.
    health = run_health(SCRIPT, run_with(state))
    assert health["status"] == EXPECTED_HEALTH[state]
    assert health["message"]
    assert "nil" not in health["message"]


def test_every_state_is_covered() -> None:
    assert set(EXPECTED_HEALTH) == set(SCENARIOS)


@pytest.mark.parametrize("phase", list(RunPhase), ids=str)
def test_the_health_check_reads_each_phase_as_the_core_does(phase: RunPhase) -> None:
    # The Lua script cannot import loka_api.phases: this holds its reading of each phase to the core's table.
    obj = {"metadata": {"name": "r", "generation": 1}, "status": {"phase": phase.value, "observedGeneration": 1}}
    assert run_health(SCRIPT, obj)["status"] == ARGOCD_HEALTH[phase].value
    assert set(ARGOCD_HEALTH) == set(RunPhase)


EVALUATION_CHECK = REPO / "gitops" / "argocd" / "health" / "loka.dev" / "Evaluation"
EVALUATION_CASES: list[dict[str, Any]] = yaml.safe_load((EVALUATION_CHECK / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", EVALUATION_CASES, ids=[Path(c["inputPath"]).stem for c in EVALUATION_CASES])
def test_evaluation_health_matches_argo_test_case(case: dict[str, Any]) -> None:
    from loka_api.evaluation import Evaluation

    obj = yaml.safe_load((EVALUATION_CHECK / case["inputPath"]).read_text())
    Evaluation.model_validate(obj)  # the test data is what the operator writes
    assert run_health((EVALUATION_CHECK / "health.lua").read_text(), obj) == case["healthStatus"]


CYCLE_CHECK = REPO / "gitops" / "argocd" / "health" / "loka.dev" / "RewardCycle"
CYCLE_SCRIPT = (CYCLE_CHECK / "health.lua").read_text()
CYCLE_CASES: list[dict[str, Any]] = yaml.safe_load((CYCLE_CHECK / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CYCLE_CASES, ids=[Path(c["inputPath"]).stem for c in CYCLE_CASES])
def test_reward_cycle_health_matches_argo_test_case(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CYCLE_CHECK / case["inputPath"]).read_text())
    assert run_health(CYCLE_SCRIPT, obj) == case["healthStatus"]


@pytest.mark.parametrize("state", sorted(CYCLE_EXPECTED))
def test_reward_cycle_health_of_the_status_the_operator_plans_now(state: str) -> None:
    # Fresh from the operator's planner, and the same as the test data ArgoCD's own test layout reads.
    obj = CYCLE_SCENARIOS[state]()
    assert obj == yaml.safe_load((CYCLE_CHECK / "testdata" / f"{state}.yaml").read_text()), (
        "run `python -m tests.deploy.cycle_health_scenarios`"
    )
    health = run_health(CYCLE_SCRIPT, obj)
    assert health["status"] == CYCLE_EXPECTED[state]
    assert health["message"] and "nil" not in health["message"]


@pytest.mark.parametrize("phase", list(CyclePhase), ids=str)
def test_the_cycle_health_check_reads_each_phase_as_the_core_does(phase: CyclePhase) -> None:
    obj = {"metadata": {"name": "c", "generation": 1}, "status": {"phase": phase.value, "observedGeneration": 1}}
    assert run_health(CYCLE_SCRIPT, obj)["status"] == CYCLE_ARGOCD_HEALTH[phase].value
    assert set(CYCLE_ARGOCD_HEALTH) == set(CyclePhase)
    stale = {**obj, "metadata": {"name": "c", "generation": 2}}
    assert run_health(CYCLE_SCRIPT, stale)["status"] == "Progressing"  # the operator has not seen the new spec
