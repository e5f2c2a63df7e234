"""The CI workflow: actionlint-clean, and the image tags each kind of push publishes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.tools import REPO, actionlint_path
from tests.deploy.metadata_tags import Push, github_expression, tags

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
MAIN = Push("push", "refs/heads/main")
RELEASE = Push("push", "refs/tags/v1.2.3")
ZERO_RELEASE = Push("push", "refs/tags/v0.4.0")
PRERELEASE = Push("push", "refs/tags/v0.3.0-rc.1")
FEATURE = Push("push", "refs/heads/feature/x")


def _workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def _images() -> dict[str, dict[str, str]]:
    return {entry["image"]: entry for entry in _workflow()["jobs"]["images"]["strategy"]["matrix"]["include"]}


def _tags(image: str, push: Push) -> set[str]:
    entry = _images()[image]
    return tags(entry["tags"], entry["flavor"], push)


def test_workflows_pass_actionlint() -> None:
    done = subprocess.run(
        [str(actionlint_path()), "-color=false", *map(str, sorted(WORKFLOW.parent.glob("*.yml")))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    done = subprocess.run([str(actionlint_path()), str(broken)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "nope" in done.stdout


@pytest.mark.parametrize(
    ("push", "operator", "trainer"),
    [
        (MAIN, {"main", "sha-abc1234", "latest"}, {"rl-main", "rl-sha-abc1234", "rl-train"}),
        (RELEASE, {"1.2.3", "1.2", "1", "latest"}, {"rl-1.2.3", "rl-1.2", "rl-train"}),
        (ZERO_RELEASE, {"0.4.0", "0.4", "latest"}, {"rl-0.4.0", "rl-0.4", "rl-train"}),
        (PRERELEASE, {"0.3.0-rc.1"}, {"rl-0.3.0-rc.1"}),
    ],
    ids=["main", "v1.2.3", "v0.4.0", "v0.3.0-rc.1"],
)
def test_each_push_publishes_exactly_these_tags(push: Push, operator: set[str], trainer: set[str]) -> None:
    assert _tags("operator", push) == operator
    assert _tags("trainer", push) == trainer


@pytest.mark.parametrize("push", [MAIN, RELEASE, ZERO_RELEASE, PRERELEASE])
def test_operator_and_trainer_tags_never_collide(push: Push) -> None:
    operator, trainer = _tags("operator", push), _tags("trainer", push)
    assert not operator & trainer
    assert all(t.startswith("rl-") for t in trainer)
    assert not any(t.startswith("rl-") for t in operator)


def test_a_sha_tag_without_its_own_prefix_would_collide() -> None:
    entry = _images()["trainer"]
    careless = entry["tags"].replace("type=sha,prefix=rl-sha-,", "type=sha,")
    assert "sha-abc1234" in tags(careless, entry["flavor"], MAIN)
    assert "sha-abc1234" in _tags("operator", MAIN)


@pytest.mark.parametrize(
    ("push", "builds"),
    [
        (MAIN, True),
        (RELEASE, True),
        (PRERELEASE, True),
        (FEATURE, False),
        (Push("pull_request", "refs/pull/7/merge"), False),
    ],
    ids=["main", "release", "prerelease", "feature-branch", "pull-request"],
)
def test_images_are_built_only_from_main_and_version_tags(push: Push, builds: bool) -> None:
    assert github_expression(_workflow()["jobs"]["images"]["if"], push) is builds


def test_tests_run_on_every_push_and_pull_request() -> None:
    workflow: dict[Any, Any] = _workflow()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["**"]
    assert "pull_request" in triggers
    assert "images" not in _workflow()["jobs"]["test"].get("needs", [])
    assert _workflow()["jobs"]["images"]["needs"] == "test"


def test_registry_and_credentials_come_from_secrets() -> None:
    text = WORKFLOW.read_text()
    for secret in ("DOCKER_REGISTRY", "DOCKER_USERNAME", "DOCKER_PASSWORD"):
        assert f"secrets.{secret}" in text
    steps = _workflow()["jobs"]["images"]["steps"]
    meta = next(s for s in steps if s.get("id") == "meta")
    assert meta["with"]["images"] == "${{ secrets.DOCKER_REGISTRY }}/loka"
