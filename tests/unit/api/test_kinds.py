"""Each Kubernetes kind Loka names is spelled once, in `loka_api.kinds` (Loka's own kinds in their models)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from loka_api import kinds
from loka_api.kinds import Kind

REPO = Path(__file__).resolve().parents[3]
# kinds.py, and the models each of Loka's own kinds is generated from (its CRD names).
SPELLED_HERE = {REPO / "api" / "loka_api" / name for name in ("kinds.py", "models.py", "evaluation.py", "cycle.py")}
# The local control plane's own start-up (Kueue's configuration and webhook probe) stands apart from Loka's packages.
APART = {REPO / "localcluster" / "controlplane.py"}
# The packages, the local control plane, the benchmarks and the tests' shared helpers (a test itself may spell a
# kind as a user of kubectl would).
HELPERS = ["tests/operator/kube.py", "tests/operator/conftest.py", "tests/operator/webhooks.py"]
SOURCES = [
    path
    for folder in ("api/loka_api", "operator/loka_operator", "trainer-image/loka_trainer", "client/loka_client",
                   "localcluster", "bench")
    for path in sorted((REPO / folder).rglob("*.py"))
    if path not in SPELLED_HERE | APART
] + [REPO / helper for helper in HELPERS]  # fmt: skip
KINDS = [value for value in vars(kinds).values() if isinstance(value, Kind)]
# Core-group plurals ("pods", "secrets", "events") are ordinary words elsewhere (a node's pod capacity, a CLI
# command); a kind with an API group is unmistakable.
SPELLINGS = sorted({s for kind in KINDS if kind.group for s in (kind.plural, kind.api_version)})


@functools.cache
def _code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of ``path`` that is code, not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_each_kind_is_spelled_only_in_loka_api_kinds(spelling: str) -> None:
    spelled = [
        f"{path.relative_to(REPO)}:{line}" for path in SOURCES for line, text in _code_strings(path) if text == spelling
    ]
    assert not spelled, f"{spelling!r} is written again outside loka_api/kinds.py: {spelled}"
