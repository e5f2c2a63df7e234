"""The operator image, checked without building it: lint-clean, what it copies exists, its entrypoint is
the operator, it runs as any non-root UID in group 0, and it carries verl's config without torch.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.dockerfiles import copied_packages, import_without, instructions

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "operator" / "Dockerfile"


def test_operator_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_everything_the_operator_image_copies_exists_and_passes_the_context_filter() -> None:
    ignore = (REPO / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line.removeprefix("!").removesuffix("/**") for line in ignore if line.startswith("!")}
    sources = [src for kw, args in instructions(DOCKERFILE) if kw == "COPY" for src in shlex.split(args)[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert source in kept, f"COPY {source}: dropped by Dockerfile.dockerignore"


def test_entrypoint_is_loka_operator_and_it_starts() -> None:
    (entrypoint,) = [args for keyword, args in instructions(DOCKERFILE) if keyword == "ENTRYPOINT"]
    script = entrypoint.strip('[]" ')
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert script == "loka-operator"
    module_name, _, function = scripts[script].partition(":")
    assert callable(getattr(importlib.import_module(module_name), function))
    result = subprocess.run(
        [Path(sys.executable).parent / script, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--namespace" in result.stdout


def test_operator_runs_as_non_root_in_group_zero_with_home_on_the_writable_tmp() -> None:
    (user,) = [args for keyword, args in instructions(DOCKERFILE) if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid == "0"
    env = " ".join(args for keyword, args in instructions(DOCKERFILE) if keyword == "ENV")
    assert re.search(r"\bHOME=/tmp\b", env), "the chart's read-only root filesystem leaves only /tmp writable"


def test_verl_is_installed_for_its_config_only() -> None:
    run = " ".join(args for keyword, args in instructions(DOCKERFILE) if keyword == "RUN")
    assert re.search(r"pip install --no-deps \"?verl==0\.9\.1", run), "verl's dependencies would pull in torch"
    assert "torch" not in run


def test_the_operator_image_carries_the_core_and_the_operator_only() -> None:
    assert copied_packages(DOCKERFILE) == {"loka_api", "loka_operator"}


def test_the_operator_starts_without_the_trainer_package() -> None:
    (check,) = re.findall(r'python -c "([^"]+)"', " ".join(a for k, a in instructions(DOCKERFILE) if k == "RUN"))
    modules = [m.strip() for m in check.removeprefix("import ").split(",")]
    result = import_without([*modules, "loka_operator.handlers", "loka_operator.reconcile"], missing="loka_trainer")
    assert result.returncode == 0, result.stderr
