"""RewardCycles in each state, with the status the operator's own planner writes for it, for the ArgoCD health check.

``python -m tests.deploy.cycle_health_scenarios`` rewrites gitops/argocd/health/loka.dev/RewardCycle/testdata/ and
its health_test.yaml from these, so the check's test data is what the operator really writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import yaml

from localcluster.tools import REPO
from loka_api.cycle import RewardCycle, Stage
from loka_operator.builders.cycle import build_stage
from loka_operator.cycles import plan_cycle
from tests.deploy.gitops import GITOPS

CHECK = GITOPS / "argocd" / "health" / "loka.dev" / "RewardCycle"
EXAMPLE = REPO / "examples" / "cycle" / "reward-cycle.yaml"
AT = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
Manifest = dict[str, Any]


def _cycle() -> Manifest:
    body: Manifest = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] |= {"uid": "0c5e7f1a-cycle", "generation": 1}
    body["spec"]["iterations"] = 2
    return body


def _with(phases: dict[tuple[int, Stage], tuple[str, str | None]]) -> Manifest:
    """The cycle after its operator saw its stages in these phases (and messages)."""
    body = _cycle()
    stages = {}
    for (iteration, stage), (phase, message) in phases.items():
        manifest = copy.deepcopy(build_stage(body, iteration, stage))
        manifest["status"] = {"phase": phase, **({"message": message} if message else {})}
        stages[manifest["metadata"]["name"]] = manifest
    status = plan_cycle(body, RewardCycle.model_validate(body), stages, at=AT).status
    body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


ITERATION_1 = {(1, Stage.RL): ("Succeeded", None), (1, Stage.EVALUATION): ("Succeeded", None)}
SCENARIOS: dict[str, Callable[[], Manifest]] = {
    "no-status": _cycle,
    "pending": lambda: _with({}),
    "running": lambda: _with({**ITERATION_1, (1, Stage.REWARD_MODEL): ("Running", None)}),
    "succeeded": lambda: _with(
        {**ITERATION_1, (1, Stage.REWARD_MODEL): ("Succeeded", None), (2, Stage.RL): ("Succeeded", None)}
    ),
    "failed": lambda: _with(
        {
            **ITERATION_1,
            (1, Stage.REWARD_MODEL): ("Failed", "Evaluation 'cycle-1-eval' wrote no preference pairs"),
        }
    ),
}
EXPECTED = {"no-status": "Progressing", "pending": "Progressing", "running": "Progressing",
            "succeeded": "Healthy", "failed": "Degraded"}  # fmt: skip


def write_testdata() -> None:
    from tests.deploy.argocd_lua import run_health

    script = (CHECK / "health.lua").read_text()
    cases = []
    for name, scenario in SCENARIOS.items():
        obj = scenario()
        (CHECK / "testdata" / f"{name}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False, width=120))
        cases.append({"healthStatus": run_health(script, obj), "inputPath": f"testdata/{name}.yaml"})
    (CHECK / "health_test.yaml").write_text(yaml.safe_dump({"tests": cases}, sort_keys=False, width=120))


if __name__ == "__main__":
    write_testdata()
