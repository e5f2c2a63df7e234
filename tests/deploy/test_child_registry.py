"""Each child kind is declared once (`loka_operator.children`): the cache, the watch handlers and the chart's RBAC
follow from its entry, and the entry says no more and no less than what the code does with the kind."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from loka_api.kinds import Kind
from loka_operator.cache import Children, WriteLedger
from loka_operator.children import CHILDREN, REGISTRY, ChildKind, Relation
from loka_operator.handlers import child_changed, watch_children
from tests.deploy.operator_api import code_verbs_of_children, required_verbs

# A side service a run might bring, declared the way a real one would be: one entry.
WIDGET = ChildKind(
    Kind("widgets.example.dev", "v1", "widgets", "Widget"),
    Relation.OWNED,
    kept={"spec": ("replicas",)},
    verbs=frozenset({"get", "create", "patch"}),
    component="widget",
    repaired=("spec",),
)


def widget(run: str, uid: str) -> dict[str, Any]:
    manifest = WIDGET.manifest(f"{run}-widget", run=run, namespace="team", uid="run-uid")
    manifest["metadata"].update(uid=uid, resourceVersion="7")
    return {**manifest, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "x" * 1000}]}}}}


def test_a_child_kind_declared_once_is_cached_watched_and_granted() -> None:
    # The cache: an object of the kind leads back to its run and is kept trimmed as the entry says.
    body = widget("qwen", "w-1")
    key = WIDGET.run_of(body)
    assert key == "team/qwen"
    cache = Children(WriteLedger())
    cache.observe(WIDGET, key, body)
    (kept,) = cache.bodies(WIDGET, key)
    assert kept["spec"] == {"replicas": 2}
    assert kept["metadata"]["labels"]["app.kubernetes.io/component"] == "widget"
    assert cache.get(WIDGET, key, "qwen-widget") == kept

    # The handlers: one watch of the kind, filtered by its labels, handing the entry to the generic handler.
    registry = kopf.OperatorRegistry()
    watch_children([WIDGET], registry)
    (handler,) = registry._watching.get_all_handlers()
    assert (handler.selector.group, handler.selector.version, handler.selector.any_name) == (  # type: ignore[union-attr]
        "widgets.example.dev",
        "v1",
        "widgets",
    )
    assert handler.param is WIDGET
    assert handler.fn is child_changed
    assert handler.labels == {"app.kubernetes.io/managed-by": "loka-operator", "app.kubernetes.io/component": "widget"}

    # The RBAC the chart must grant: the cache's list and watch, and the reconciler's verbs.
    granted = required_verbs(children=(*CHILDREN, WIDGET), kopf_registry=registry)
    assert granted[("widgets.example.dev", "widgets")] == {"get", "list", "watch", "create", "patch"}


@pytest.mark.parametrize("child", REGISTRY, ids=lambda child: f"{child.parent.kind}-{child.name}")
def test_each_child_kind_declares_exactly_the_verbs_the_code_uses_on_it(child: ChildKind) -> None:
    assert code_verbs_of_children()[child.name] == set(child.all_verbs)


def test_every_child_kind_is_watched_once_by_the_operator() -> None:
    watched = [
        handler.param
        for handler in kopf.get_default_registry()._watching.get_all_handlers()
        if isinstance(handler.param, ChildKind)
    ]
    assert watched == [child for child in REGISTRY if child.watched]


def test_an_owned_child_kind_must_say_which_component_it_is() -> None:
    with pytest.raises(ValueError, match="Widget needs a component label"):
        ChildKind(WIDGET.kind, Relation.OWNED, kept={}, verbs=frozenset({"get", "create"}))
    with pytest.raises(ValueError, match="without the patch verb"):
        ChildKind(WIDGET.kind, Relation.OWNED, kept={}, verbs=frozenset({"create"}), component="w", repaired=("spec",))


def test_what_the_api_server_fills_in_is_not_drift_but_a_changed_value_is() -> None:
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "s", "image": "a"}]}}}}
    defaulted = {"spec": {"replicas": 2, "strategy": {}, "template": {"spec": {"containers": [
        {"name": "s", "image": "a", "imagePullPolicy": "IfNotPresent"}]}}}}  # fmt: skip
    assert WIDGET.drifted(desired, defaulted) == {}
    scaled = {"spec": {**defaulted["spec"], "replicas": 0}}
    assert WIDGET.drifted(desired, scaled) == {"spec": desired["spec"]}
    extra = {"spec": {**defaulted["spec"], "template": {"spec": {"containers": [{"name": "s", "image": "a"}] * 2}}}}
    assert WIDGET.drifted(desired, extra) == {"spec": desired["spec"]}


def test_a_side_service_kind_is_owned_and_may_be_created() -> None:
    with pytest.raises(ValueError, match="side service kind Widget"):
        ChildKind(WIDGET.kind, Relation.OBSERVED, kept={}, verbs=frozenset({"get", "create"}), build=lambda *_: [])
