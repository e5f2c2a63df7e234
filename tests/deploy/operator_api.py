"""The API verbs the operator's code uses, read from the code itself, so the chart's RBAC can be
compared with them: kopf's watches and indexes (list, watch), the verbs each child kind's registry
entry declares (`loka_operator.children`), every `client.<verb>(KIND, ...)` call, the rules of the
per-run Role it grants (RBAC lets it grant only what it holds), and the `update` on
`trainingruns/finalizers` that the OwnerReferencesPermissionEnforcement admission plugin (OpenShift)
demands of whoever sets `blockOwnerDeletion` on a child.

Each call's kind is resolved by evaluating its first argument (`kinds.SECRET`, `RAY_JOB.kind`) in its
module; a call on a kind only known at run time (`child.kind`) is allowed only inside the generic
helpers that take a registry entry, whose callers are read instead. `code_verbs_of_children` lets a
test prove that each registry entry declares exactly what the code does with it.

The calls in `leader.py` are made in the operator's own namespace (its Lease), so they are a table
of their own: `required_verbs(own_namespace=True)`."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import kopf

import loka_operator.handlers  # registers the kopf handlers
from localcluster.tools import REPO
from loka_api import kinds
from loka_api.kinds import Kind
from loka_operator import naming
from loka_operator.builders.evaluation import build_evaluator_identity
from loka_operator.builders.rbac import build_role
from loka_operator.children import REGISTRY, ChildKind

OPERATOR_SOURCES = REPO / "operator" / "loka_operator"
CLIENT_VERBS = {
    "get": "get",
    "get_metadata": "get",
    "list": "list",
    "create": "create",
    "merge_patch": "patch",
    "replace": "update",
    "delete": "delete",
}
# Reconciler helpers that take a child kind's registry entry: _create = create, then get on a 409; _ensure =
# _create when absent, or patch the fields the entry repairs.
HELPERS = {"_create", "_ensure"}
# Functions whose client calls name a kind only known at run time (their callers, or the registry, say which).
GENERIC = {*HELPERS, "_list", "_current", "_ensure_side_services"}
# Whose calls happen in the operator's own namespace rather than in the namespaces it watches.
OWN_NAMESPACE_SOURCES = {"leader.py"}
VerbTable = dict[tuple[str, str], set[str]]


def _add(table: VerbTable, group: str, resource: str, *verbs: str) -> None:
    table.setdefault((group, resource), set()).update(verbs)


def _module_of(source: Path) -> Any:
    relative = source.relative_to(OPERATOR_SOURCES.parent).with_suffix("")
    return importlib.import_module(".".join(relative.parts))


def _resolve(node: ast.expr, module: Any) -> Any:
    """The value of a dotted name (`kinds.SECRET`, `RAY_JOB.kind`) in ``module``; None for anything else."""
    if isinstance(node, ast.Name):
        return getattr(module, node.id, None)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, module)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


class _Calls(ast.NodeVisitor):
    """(verb, kind, subresource) for each `...client.<method>(KIND, ...)` call and each helper call."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.module = _module_of(source)
        self.function = ""
        self.found: list[tuple[str, Kind, str | None]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 (ast.NodeVisitor's naming)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Attribute) and node.args):
            return
        owner, method = node.func.value, node.func.attr
        first = _resolve(node.args[0], self.module)
        if isinstance(owner, ast.Name) and owner.id == "self" and method in HELPERS:
            if not isinstance(first, ChildKind):
                assert self.function in GENERIC, f"{self._where(node)}: cannot tell which child kind {method} is for"
                return
            self.found += [("get", first.kind, None), ("create", first.kind, None)]
            if method == "_ensure" and first.repaired:
                self.found.append(("patch", first.kind, None))
            return
        is_client = (isinstance(owner, ast.Attribute) and owner.attr == "client") or (
            isinstance(owner, ast.Name) and owner.id == "client"
        )
        if not is_client or method not in CLIENT_VERBS:
            return
        if not isinstance(first, Kind):
            assert self.function in GENERIC, f"{self._where(node)}: cannot tell which kind this call is on"
            return
        sub = next((k.value for k in node.keywords if k.arg == "subresource"), None)
        subresource = sub.value if isinstance(sub, ast.Constant) and isinstance(sub.value, str) else None
        self.found.append((CLIENT_VERBS[method], first, subresource))

    def _where(self, node: ast.AST) -> str:
        return f"{self.source.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"


def _client_calls(source: Path) -> list[tuple[str, Kind, str | None]]:
    calls = _Calls(source)
    calls.visit(ast.parse(source.read_text()))
    return calls.found


def _sources(own_namespace: bool) -> list[Path]:
    sources = sorted(OPERATOR_SOURCES.rglob("*.py"))
    return [s for s in sources if (s.name in OWN_NAMESPACE_SOURCES) == own_namespace]


def _add_calls(table: VerbTable, sources: list[Path]) -> None:
    for source in sources:
        for verb, kind, subresource in _client_calls(source):
            plural = kind.plural if subresource is None else f"{kind.plural}/{subresource}"
            _add(table, kind.group, plural, verb)


def required_verbs(
    *,
    own_namespace: bool = False,
    children: Collection[ChildKind] = REGISTRY,
    kopf_registry: kopf.OperatorRegistry | None = None,
) -> VerbTable:
    """What the operator does in the namespaces it watches, or (own_namespace) in its own."""
    table: VerbTable = {}
    if not own_namespace:
        _add_watched(table, kopf_registry or kopf.get_default_registry())
        for child in children:
            _add(table, child.kind.group, child.kind.plural, *child.all_verbs)
    _add_calls(table, _sources(own_namespace))
    return table


def code_verbs_of_children(children: Collection[ChildKind] = REGISTRY) -> dict[str, set[str]]:
    """What the code (its calls and kopf's watches), not the registry, does with each child kind, by kind."""
    table: VerbTable = {}
    _add_watched(table, kopf.get_default_registry())
    _add_calls(table, _sources(own_namespace=False))
    for child in children:
        if child.build is not None:  # Reconciler._ensure_side_services: _ensure with the entry
            _add(table, child.kind.group, child.kind.plural, "get", "create", *(["patch"] if child.repaired else []))
    return {child.name: table.get((child.kind.group, child.kind.plural), set()) for child in children}


def _add_watched(table: VerbTable, registry: kopf.OperatorRegistry) -> None:
    assert loka_operator.handlers  # imported for its registrations
    for handler in [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]:
        selector = handler.selector
        assert selector is not None
        plural = selector.plural or selector.any_name
        assert isinstance(plural, str), f"kopf handler on {selector}: resource not named"
        _add(table, selector.group or "", plural, "list", "watch")
    _evaluator_role = build_evaluator_identity("evaluation", "ns", "uid")[1]
    for rule in [*build_role("run", "ns", "uid")["rules"], *_evaluator_role["rules"]]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                _add(table, group, resource, *rule["verbs"])
    if naming.owner_reference("run", "uid").get("blockOwnerDeletion"):
        _add(table, kinds.TRAINING_RUN.group, f"{kinds.TRAINING_RUN.plural}/finalizers", "update")
    if naming.evaluation_owner_reference("evaluation", "uid").get("blockOwnerDeletion"):
        _add(table, kinds.EVALUATION.group, f"{kinds.EVALUATION.plural}/finalizers", "update")
    if naming.cycle_owner_reference("cycle", "uid").get("blockOwnerDeletion"):
        _add(table, kinds.REWARD_CYCLE.group, f"{kinds.REWARD_CYCLE.plural}/finalizers", "update")
