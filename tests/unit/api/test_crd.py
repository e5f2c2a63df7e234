"""The committed CRD is exactly what the generator writes from the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loka_api import MUTABLE_FIELDS, RUN_SHAPING_FIELDS, TrainingRunSpec
from loka_api.crd import CRD_PATH, build_crd, render_crd_yaml

REPO = Path(__file__).resolve().parents[3]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    return found


def test_committed_crd_equals_generator_output() -> None:
    committed = (REPO / CRD_PATH).read_text(encoding="utf-8")
    assert committed == render_crd_yaml(), "crds/ is stale: run `make crds` and commit the result"


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if "properties" in node and not path.endswith("/properties"):
            assert node.get("type") == "object", path
        for forbidden in ("$ref", "$defs", "title", "const", "propertyNames", "patternProperties"):
            assert forbidden not in node or path.endswith("/properties"), f"{forbidden} at {path}"
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path


def test_every_string_and_list_in_spec_is_bounded_for_cel_cost() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec):
        if path.endswith("/properties") or "/anyOf[" in path:
            continue
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path


def test_printer_columns_and_names() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Phase",
        "Step",
        "Reward",
        "Checkpoint",
        "Queue",
        "Age",
    ]
    # `kubectl get -o wide` adds what an SFT -> GRPO pipeline needs: the algorithm, the loss, the validation
    # reward and the run a run started from.
    assert [c["name"] for c in columns if c.get("priority") == 1] == ["Algorithm", "Loss", "Validation", "From"]
    assert version["subresources"] == {"status": {}}
    assert "tr" in crd["spec"]["names"]["shortNames"]
    assert crd["spec"]["names"]["categories"] == ["loka"]


def test_every_run_shaping_field_has_an_immutability_rule() -> None:
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    guarded = {
        rule["fieldPath"].removeprefix(".spec.") for rule in rules if rule.get("reason") == "FieldValueForbidden"
    }
    assert guarded == set(RUN_SHAPING_FIELDS)
    spec_fields = {field.alias or name for name, field in TrainingRunSpec.model_fields.items()}
    assert set(RUN_SHAPING_FIELDS) | set(MUTABLE_FIELDS) == spec_fields


def test_defaults_reach_nested_objects() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # CEL rules read training.* and resources.*: the API server must fill them when omitted.
    assert spec["properties"]["training"]["default"]["samplesPerPrompt"] == 5
    assert spec["properties"]["resources"]["default"]["worker"] == {"cpu": "16", "memory": "64Gi"}
    assert yaml.safe_dump(spec)  # serialisable as YAML
