"""The API verbs the operator's code uses, read from the code itself, so the chart's RBAC can be
compared with them: kopf's watches and indexes (list, watch), every `client.<verb>(RESOURCE, ...)`
call, the rules of the per-run Role it grants (RBAC lets it grant only what it holds), and the
`update` on `trainingruns/finalizers` that the OwnerReferencesPermissionEnforcement admission
plugin (OpenShift) demands of whoever sets `blockOwnerDeletion` on a child.

The calls in `leader.py` are made in the operator's own namespace (its Lease), so they are a table
of their own: `required_verbs(own_namespace=True)`."""

from __future__ import annotations

import ast
from pathlib import Path

import kopf

import loka_operator.handlers  # registers the kopf handlers
from localcluster.tools import REPO
from loka_api import GROUP, PLURAL
from loka_operator import kube, naming
from loka_operator.builders.rbac import build_role

OPERATOR_SOURCES = REPO / "operator" / "loka_operator"
CLIENT_VERBS = {
    "get": "get",
    "list": "list",
    "create": "create",
    "merge_patch": "patch",
    "replace": "update",
    "delete": "delete",
}
# Reconciler helpers that wrap client calls: _create = create, then get on a 409; _ensure = _create when
# absent, or patch the owned fields (its last argument; an empty tuple never patches).
HELPERS = {"_create", "_ensure"}
# Whose calls happen in the operator's own namespace rather than in the namespaces it watches.
OWN_NAMESPACE_SOURCES = {"leader.py"}
VerbTable = dict[tuple[str, str], set[str]]


def _add(table: VerbTable, group: str, resource: str, *verbs: str) -> None:
    table.setdefault((group, resource), set()).update(verbs)


def _client_calls(source: Path) -> list[tuple[str, str, str | None]]:
    """(method, resource constant, subresource) for each `...client.<method>(CONSTANT, ...)` call."""
    calls: list[tuple[str, str, str | None]] = []
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        is_client = (isinstance(owner, ast.Attribute) and owner.attr == "client") or (
            isinstance(owner, ast.Name) and owner.id == "client"
        )
        first = node.args[0] if node.args else None
        if not isinstance(first, ast.Name):
            continue
        if isinstance(owner, ast.Name) and owner.id == "self" and node.func.attr in HELPERS:
            calls += [("get", first.id, None), ("create", first.id, None)]
            owned = node.args[-1] if node.func.attr == "_ensure" else None
            if isinstance(owned, ast.Tuple) and owned.elts:
                calls.append(("merge_patch", first.id, None))
            continue
        if not is_client or node.func.attr not in CLIENT_VERBS:
            continue
        sub = next((k.value for k in node.keywords if k.arg == "subresource"), None)
        subresource = sub.value if isinstance(sub, ast.Constant) and isinstance(sub.value, str) else None
        calls.append((node.func.attr, first.id, subresource))
    return calls


def required_verbs(*, own_namespace: bool = False) -> VerbTable:
    """What the operator does in the namespaces it watches, or (own_namespace) in its own."""
    table: VerbTable = {}
    sources = sorted(OPERATOR_SOURCES.rglob("*.py"))
    if own_namespace:
        sources = [s for s in sources if s.name in OWN_NAMESPACE_SOURCES]
    else:
        sources = [s for s in sources if s.name not in OWN_NAMESPACE_SOURCES]
        _add_watched(table)
    for source in sources:
        for method, constant, subresource in _client_calls(source):
            resource = getattr(kube, constant, None)
            if isinstance(resource, kube.Resource):
                plural = resource.plural if subresource is None else f"{resource.plural}/{subresource}"
                _add(table, resource.group, plural, CLIENT_VERBS[method])
    return table


def _add_watched(table: VerbTable) -> None:
    registry = kopf.get_default_registry()
    assert loka_operator.handlers  # imported for its registrations
    for handler in [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]:
        selector = handler.selector
        assert selector is not None
        plural = selector.plural or selector.any_name
        assert isinstance(plural, str), f"kopf handler on {selector}: resource not named"
        _add(table, selector.group or "", plural, "list", "watch")
    for rule in build_role("run", "ns", "uid")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                _add(table, group, resource, *rule["verbs"])
    if naming.owner_reference("run", "uid").get("blockOwnerDeletion"):
        _add(table, GROUP, f"{PLURAL}/finalizers", "update")
