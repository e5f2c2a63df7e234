"""The trainer image, checked without building it: lint-clean, everything it copies exists, its entrypoint
runs, it runs as any non-root UID in group 0, and it bakes in no secret.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.dockerfiles import copied_packages, import_without
from tests.dockerfiles import instructions as dockerfile_instructions

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "trainer-image" / "Dockerfile"
SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_to_a_tag() -> None:
    (base,) = [args for keyword, args in instructions() if keyword == "FROM"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", base), base
    assert not base.endswith(":latest")


def test_everything_the_image_copies_exists_in_the_build_context() -> None:
    copies = [shlex.split(args) for keyword, args in instructions() if keyword in {"COPY", "ADD"}]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_build_context_filter_keeps_what_the_image_copies() -> None:
    ignore = (REPO / "trainer-image" / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line.removeprefix("!").removesuffix("/**") for line in ignore if line.startswith("!")}
    copied = {source for keyword, args in instructions() if keyword == "COPY" for source in shlex.split(args)[:-1]}
    assert copied <= kept, copied - kept


def test_entrypoint_is_the_installed_console_script_and_imports() -> None:
    (entrypoint,) = [args for keyword, args in instructions() if keyword == "ENTRYPOINT"]
    script = entrypoint.strip('[]" ')
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module_name, _, function = scripts[script].partition(":")
    assert callable(getattr(importlib.import_module(module_name), function))
    result = subprocess.run(
        [Path(sys.executable).parent / script, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in ("render", "run", "dataset"))


def test_image_runs_as_non_root_in_group_zero_with_group_writable_dirs() -> None:
    (user,) = [args for keyword, args in instructions() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid == "0"
    run = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    env = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    home = re.search(r"HOME=(\S+)", env)
    work = re.search(r"LOKA_WORK_DIR=(\S+)", env)
    assert home
    assert work
    for folder in (home.group(1), work.group(1)):
        assert f"chgrp -R 0 {folder}" in run or re.search(rf"chgrp -R 0 [^&]*{re.escape(folder)}", run)
        assert re.search(rf"chmod -R g=u [^&]*{re.escape(folder)}", run), folder


@pytest.mark.parametrize("keyword", ["ENV", "ARG", "LABEL"])
def test_no_secret_is_baked_into_the_image(keyword: str) -> None:
    for kw, args in instructions():
        if kw == keyword:
            names = re.findall(r"([A-Za-z_][\w.]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_NAMES.search(n)], f"{kw} {args}"


def test_ray_waits_long_enough_after_sigterm_for_the_trainer_to_stop_verl_and_report() -> None:
    from loka_trainer.engines.verl import STOP_GRACE_S

    env = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    wait = re.search(r"RAY_JOB_STOP_WAIT_TIME_S=(\d+)", env)
    assert wait, "Ray's job supervisor would SIGKILL the trainer 3 s after SIGTERM"
    assert STOP_GRACE_S + 5 <= int(wait.group(1)) < 30  # room to report, inside the pod's 30 s grace


def test_the_trainer_image_carries_the_core_and_the_trainer_only() -> None:
    assert copied_packages(DOCKERFILE) == {"loka_api", "loka_trainer"}


def test_the_trainer_runs_without_the_operator_package() -> None:
    modules = ["loka_trainer.cli", "loka_trainer.runner", "loka_trainer.verl_callback", "loka_trainer.engines.trl"]
    result = import_without(modules, missing="loka_operator")
    assert result.returncode == 0, result.stderr
