"""Three packages, one way: loka_operator -> loka_api <- loka_trainer, as `make lint` (import-linter) enforces.

The contract is also shown to bite: the same check on a copy of the tree with one wrong import fails and names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "loka_api": "api",
    "loka_operator": "operator",
    "loka_trainer": "trainer-image",
    "loka_cli": "cli",
    "loka_client": "client",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The copies on PYTHONPATH shadow the editable install, so grimp reads the tree under `root`.
    path = os.pathsep.join(str(root / folder) for folder in PACKAGES.values())
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": path},
    )


def copy_tree(target: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", target / "pyproject.toml")
    for package, folder in PACKAGES.items():
        shutil.copytree(
            REPO / folder / package, target / folder / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def test_the_repository_keeps_the_import_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("trainer-image/loka_trainer/runner.py", "import loka_operator.naming", "never import each other"),
        ("operator/loka_operator/validation.py", "import loka_trainer.staging", "never import each other"),
        ("api/loka_api/models.py", "import loka_operator.naming", "core imports neither"),
        ("cli/loka_cli/runs.py", "import loka_operator.naming", "command line stands on the client and the core only"),
        ("client/loka_client/__init__.py", "import loka_trainer.staging", "client library stands on the core only"),
        ("operator/loka_operator/reconcile.py", "import loka_cli.views", "nothing in the images imports"),
        ("trainer-image/loka_trainer/runner.py", "import loka_client", "nothing in the images imports"),
        ("operator/loka_operator/reconcile.py", "import loka_api.checkpoints", "operator reaches S3 only"),
    ],
)
def test_a_wrong_import_breaks_the_contract_and_is_named(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    source = root / module
    source.write_text(source.read_text() + f"\n{wrong_import}  # the mistake under test\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
    imported = wrong_import.removeprefix("import ")
    assert imported in result.stdout, result.stdout
