"""`loka cycle`: a RewardCycle's table, each iteration's stages with their phases and the fields that link them, wait's
exit code, and a bad manifest refused naming its field before anything is sent, through `loka` itself against an API
server held in memory (the real control plane: tests/operator/test_cycles.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from localcluster.tools import REPO
from loka_api.cycle import RewardCycle, Stage
from loka_cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from loka_cli.main import main
from loka_client.connection import Connection
from loka_operator.builders.cycle import build_stage
from loka_operator.cycles import plan_cycle

AT = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
EXAMPLE = REPO / "examples" / "cycle" / "reward-cycle-demo.yaml"
GPU_EXAMPLE = REPO / "examples" / "cycle" / "reward-cycle.yaml"  # its reward model served by the operator
JSON = dict[str, Any]
STAGES = tuple(Stage)


class ApiServer:
    """The custom objects API of one API server, in memory: objects by (plural, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.applied: list[tuple[JSON, JSON]] = []

    def put(self, body: JSON) -> None:
        plural = {"TrainingRun": "trainingruns", "Evaluation": "evaluations", "RewardCycle": "rewardcycles"}
        meta = body["metadata"]
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("creationTimestamp", "2026-12-07T07:58:00Z")
        self.objects[(plural[body["kind"]], meta["namespace"], meta["name"])] = body

    def get_namespaced_custom_object(self, _group: str, _version: str, ns: str, plural: str, name: str) -> JSON:
        if (plural, ns, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[(plural, ns, name)])

    def list_namespaced_custom_object(self, _group: str, _version: str, ns: str, plural: str) -> JSON:
        return {"items": [copy.deepcopy(b) for (p, n, _), b in self.objects.items() if (p, n) == (plural, ns)]}

    def list_cluster_custom_object(self, _group: str, _version: str, plural: str) -> JSON:
        return {"items": [copy.deepcopy(b) for (p, _, _), b in self.objects.items() if p == plural]}

    def patch_namespaced_custom_object(self, *args: Any, **options: Any) -> Any:
        body = {**args[5], "metadata": {**args[5]["metadata"], "generation": 1}}
        self.applied.append((body, options))
        return SimpleNamespace(data=json.dumps(body))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    server = ApiServer()
    monkeypatch.setattr(Connection, "custom", property(lambda _: server))
    monkeypatch.setattr(Connection, "_connect", lambda self: setattr(self, "_namespace", self.namespace_flag))
    return server


def loka(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "-n", "team"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cycle_body(iterations: int = 2, example: Path = EXAMPLE) -> JSON:
    body: JSON = yaml.safe_load(example.read_text())
    body["metadata"] |= {"name": "c", "namespace": "team", "uid": "cycle-uid", "generation": 1}
    body["spec"]["iterations"] = iterations
    return body


def stored_cycle(api: ApiServer, phases: dict[str, str], iterations: int = 2, example: Path = EXAMPLE) -> None:
    """The cycle and the stages it made so far, each in its phase, and the status the operator's planner gives it."""
    body = cycle_body(iterations, example)
    stages: dict[str, JSON] = {}
    for iteration in range(1, iterations + 1):
        for stage in (Stage.RL, Stage.EVALUATION, Stage.REWARD_MODEL):
            manifest = build_stage(body, iteration, stage)
            if (name := manifest["metadata"]["name"]) in phases:
                manifest["status"] = {"phase": phases[name]}
                stages[name] = manifest
                api.put(manifest)
    status = plan_cycle(body, RewardCycle.model_validate(body), stages, at=AT).status
    api.put({**body, "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)})


def test_list_shows_the_printer_columns_of_kubectl_get_rewardcycles(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert loka(capsys, "cycle", "list") == (EXIT_OK, "No RewardCycles in namespace 'team'.\n", "")
    stored_cycle(api, {"c-1-rl": "Succeeded", "c-1-eval": "Running", "c-1-rm": "Pending"})
    code, out, _ = loka(capsys, "cycle", "list")
    header, row = out.splitlines()
    assert code == EXIT_OK
    assert header.split() == ["NAME", "PHASE", "ITERATION", "OF", "STAGE", "STAGE-PHASE", "AGE"]
    assert row.split()[:6] == ["c", "Running", "1", "2", "c-1-eval", "Running"]
    assert loka(capsys, "cycle", "status", "-A")[1].splitlines()[1].split()[:2] == ["team", "c"]
    listed = yaml.safe_load(loka(capsys, "cycle", "list", "-o", "yaml")[1])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["c"]


def test_status_shows_every_stage_with_its_phase_and_the_field_that_links_it_to_the_stage_before(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    done = {"c-1-rl": "Succeeded", "c-1-eval": "Succeeded", "c-1-rm": "Succeeded"}
    stored_cycle(api, {**done, "c-2-rl": "Running"}, example=GPU_EXAMPLE)
    code, out, _ = loka(capsys, "cycle", "status", "c")
    assert code == EXIT_OK
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["c", "Running", "2", "iterations"]
    assert out.splitlines()[1] == "  iteration 2 of 2: TrainingRun c-2-rl is Running"  # the cycle's own words
    stage = {words[2]: words for words in lines if words[0] in STAGES}
    assert stage["c-1-rl"][:4] == ["rl", "TrainingRun", "c-1-rl", "Succeeded"]
    assert stage["c-1-eval"][:4] == ["evaluation", "Evaluation", "c-1-eval", "Succeeded"]
    assert stage["c-1-rm"][:4] == ["rewardModel", "TrainingRun", "c-1-rm", "Succeeded"]
    assert stage["c-2-rl"][:4] == ["rl", "TrainingRun", "c-2-rl", "Running"]
    assert "<- rollouts.fromRun c-1-rl" in out
    assert "<- data.fromEvaluation c-1-eval" in out
    assert "<- model.fromRun c-1-rl (final)" in out
    assert "<- reward component 'rm': rewardModel.fromRun c-1-rm" in out
    order = [" ".join(w) if w[0] == "iteration" else w[2] for w in lines[2:] if w[0] in ("iteration", *STAGES)]
    assert order == ["iteration 1 of 2", "c-1-rl", "c-1-eval", "c-1-rm", "iteration 2 of 2", "c-2-rl"]


def test_status_names_the_iterations_not_created_yet_and_a_stage_deleted_since(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_cycle(api, {"c-1-rl": "Running", "c-1-eval": "Pending", "c-1-rm": "Pending"}, iterations=3)
    del api.objects[("evaluations", "team", "c-1-eval")]
    out = loka(capsys, "cycle", "status", "c")[1]
    assert "iteration 2 of 3: not created yet (once c-1-rm succeeded)" in out
    assert "iteration 3 of 3: not created yet (once c-2-rm succeeded)" in out
    assert "not there now (the cycle last saw it Pending)" in out


def test_wait_exits_0_when_the_cycle_succeeded_and_1_naming_the_stage_when_it_failed(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_cycle(api, {"c-1-rl": "Succeeded"}, iterations=1)
    code, out, _ = loka(capsys, "cycle", "wait", "c", "--timeout", "5")
    assert code == EXIT_OK and out.startswith("c   Succeeded") and "1 iteration done: c-1-rl succeeded" in out

    stored_cycle(api, {"c-1-rl": "Failed", "c-1-eval": "Pending", "c-1-rm": "Pending"})
    code, out, _ = loka(capsys, "cycle", "wait", "c", "--timeout", "5")
    assert code == EXIT_FAILED
    assert "RewardCycle team/c failed: iteration 1: TrainingRun c-1-rl failed" in out
    assert "iteration 2 of 2: not created yet (nor will it be: the cycle failed)" in out


def test_a_missing_cycle_and_a_watch_without_a_name_are_refused_saying_what_to_do(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = loka(capsys, "cycle", "status", "nope")
    assert code == EXIT_NOT_FOUND and "no RewardCycle 'nope' in namespace 'team'" in err
    assert "loka cycle list -n team" in err
    code, _, err = loka(capsys, "cycle", "status", "-w")
    assert code == EXIT_USAGE and "-w needs a RewardCycle name" in err


def test_submit_applies_the_cycle_server_side_and_refuses_a_bad_one_naming_field_and_value(
    api: ApiServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = cycle_body()
    (tmp_path / "cycle.yaml").write_text(yaml.safe_dump(good))
    code, out, _ = loka(capsys, "cycle", "submit", "-f", str(tmp_path / "cycle.yaml"), "--dry-run")
    assert (code, out) == (EXIT_OK, "rewardcycle.loka.dev/c validated (server dry run) in namespace team\n")
    [(applied, options)] = api.applied
    assert options["field_manager"] == "loka" and options["dry_run"] == "All"
    assert applied["kind"] == "RewardCycle" and "status" not in applied

    bad = cycle_body()
    bad["spec"]["iterations"] = 100
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code, _, err = loka(capsys, "cycle", "submit", "-f", str(tmp_path / "bad.yaml"))
    assert code == EXIT_USAGE
    assert f"-f {tmp_path / 'bad.yaml'}: spec.iterations: Input should be less than or equal to 99 (got 100)" in err
    assert len(api.applied) == 1  # nothing more was sent
    code, _, err = loka(capsys, "cycle", "submit", "-f", str(tmp_path / "missing.yaml"))
    assert code == EXIT_USAGE and "missing.yaml: No such file or directory" in err
