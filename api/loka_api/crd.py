"""Generate the TrainingRun CRD from the pydantic models (`python -m loka_api.crd`).

pydantic's JSON schema is rewritten into a Kubernetes structural schema: `$ref`s inlined,
`Optional` unwrapped, titles and null defaults dropped, numeric exclusive bounds turned into
OpenAPI 3.0 booleans, single-value `const` turned into `enum`.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from loka_api.contract import MAX_RUN_NAME_LENGTH
from loka_api.models import (
    CATEGORIES,
    GROUP,
    KIND,
    MUTABLE_FIELDS,
    PLURAL,
    RUN_SHAPING_FIELDS,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    TrainingRunSpec,
    TrainingRunStatus,
    cel,
)
from loka_api.recipes import Recipe, recipes
from loka_api.recipes.base import ancestors

CRD_PATH = Path("crds") / f"{PLURAL}.{GROUP}.yaml"

JSONSchema = dict[str, Any]

_DROP_KEYS = frozenset({"title"})


def _resolve(node: Any, defs: dict[str, JSONSchema]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **siblings}, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _structural(node: Any) -> Any:
    """Rewrite one resolved pydantic schema node into its structural-schema form."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSONSchema = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    # Optional[X] -> X: absence already means "not set"; structural schemas have no `type: null`.
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and any(branch == {"type": "null"} for branch in any_of):
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
    for key in _DROP_KEYS:
        out.pop(key, None)
    if "default" in out and out["default"] is None:
        del out["default"]
    if isinstance(out.get("default"), dict):
        out["default"] = _without_nulls(out["default"])
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[inclusive] = value
            out[bound] = True
    if out.get("format") == "date-time":
        out["type"] = "string"
    if isinstance(out.get("maxLength"), int) and out.get("type") == "object":
        out["maxProperties"] = out.pop("maxLength")
    if out.get("type") == "array" and "maxLength" in out:
        out["maxItems"] = out.pop("maxLength")
    for key in ("properties",):
        if key in out:
            out[key] = {name: _structural(child) for name, child in out[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _structural(out[key])
    if "anyOf" in out:
        out["anyOf"] = [_structural(branch) for branch in out["anyOf"]]
    return out


def model_schema(model: type[Any]) -> JSONSchema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve(raw, raw.get("$defs", {}))
    result: JSONSchema = _structural(resolved)
    return result


def _unchanged(field: str, always_set: bool) -> str:
    """CEL: spec.<field> is as it was. Each field access on the spec costs the API server a walk of the spec's
    schema, and every status write evaluates these rules: a field always set (required or defaulted) is compared
    at once, an optional one tested for presence once on each side."""
    if always_set:
        return f"self.spec.{field} == oldSelf.spec.{field}"
    return (
        f"has(self.spec.{field}) ? has(oldSelf.spec.{field}) && self.spec.{field} == oldSelf.spec.{field} "
        f": !has(oldSelf.spec.{field})"
    )


# A run the operator rejected (Valid=False) never launched, so its spec may still be fixed.
_REJECTED = (
    "has(oldSelf.status) && has(oldSelf.status.conditions) && "
    "oldSelf.status.conditions.exists(c, c.type == 'Valid' && c.status == 'False')"
)


def name_rule() -> dict[str, str]:
    # KubeRay requires the RayJob name (the run's name) to be a DNS-1035 label of at most 47 characters.
    return cel(
        f"size(self.metadata.name) <= {MAX_RUN_NAME_LENGTH} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        f"metadata.name must start with a letter, use only lowercase letters, digits and '-', and be at most "
        f"{MAX_RUN_NAME_LENGTH} characters (KubeRay derives the Ray cluster and service names from it)",
        reason="FieldValueInvalid",
    )


def lineage_rule() -> dict[str, str]:
    return cel(
        "!has(self.spec.model.fromRun) || self.spec.model.fromRun.name != self.metadata.name",
        "spec.model.fromRun.name must name another run: a run cannot start from its own checkpoint",
        field_path=".spec.model.fromRun.name",
        reason="FieldValueInvalid",
    )


def immutability_rules(spec: JSONSchema) -> list[dict[str, str]]:
    mutable = ", ".join(MUTABLE_FIELDS)
    required, fields = set(spec.get("required", ())), spec["properties"]
    return [
        cel(
            # Every status write evaluates the rules on the whole object (the spec does not change there): the
            # field's comparison first ends each rule before it walks the conditions.
            f"({_unchanged(field, field in required or 'default' in fields[field])}) || {_REJECTED}",
            f"spec.{field} is immutable once the run is created (only {mutable} may change; "
            "delete and recreate the run to change it)",
            field_path=f".spec.{field}",
            reason="FieldValueForbidden",
        )
        for field in RUN_SHAPING_FIELDS
    ]


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def _is_one_of(algorithms: tuple[str, ...]) -> str:
    if len(algorithms) == 1:
        return f"self.algorithm == '{algorithms[0]}'"
    return f"self.algorithm in {_cel_list(algorithms)}"


def _is_none_of(algorithms: tuple[str, ...]) -> str:
    if len(algorithms) == 1:
        return f"self.algorithm != '{algorithms[0]}'"
    return f"!(self.algorithm in {_cel_list(algorithms)})"


def _sequences_per_item(families: tuple[Recipe, ...]) -> str:
    """CEL: sequences per batch item, by algorithm (one per SFT demonstration, a group per RL prompt)."""
    *guarded, last = families
    expression = last.sequences_per_item
    for recipe in reversed(guarded):
        if recipe.sequences_per_item != expression:
            expression = f"({_is_one_of(recipe.algorithms)} ? {recipe.sequences_per_item} : {expression})"
    return expression


def recipe_rules(families: tuple[Recipe, ...]) -> list[dict[str, str]]:
    """The spec rules that depend on the algorithm, each from the recipe that owns it."""
    per_item = _sequences_per_item(families)
    singles = [a for recipe in families if recipe.sequences_per_item == "1" for a in recipe.algorithms]
    except_for = f" (times training.samplesPerPrompt, except for {', '.join(singles)})" if singles else ""
    rules = [
        cel(
            "self.engine != 'verl' || self.resources.workers * self.resources.gpusPerWorker == 0 || "
            f"(self.training.batchSize * {per_item}) % (self.resources.workers * self.resources.gpusPerWorker) == 0",
            f"training.batchSize{except_for} must be divisible by resources.workers * resources.gpusPerWorker "
            "(verl splits each batch evenly over GPUs)",
            field_path=".training.batchSize",
        )
    ]
    with_rollouts = tuple(a for recipe in families if recipe.rollouts for a in recipe.algorithms)
    without = [a for recipe in families if not recipe.rollouts for a in recipe.algorithms]
    rules.append(
        cel(
            f"!has(self.rollouts) || ({_is_one_of(with_rollouts)} && has(self.checkpoints))",
            "spec.rollouts keeps an RL run's trajectories next to its checkpoints: it needs spec.checkpoints and "
            f"an RL algorithm ({' and '.join(without)} generate no rollouts)",
            field_path=".rollouts",
        )
    )
    for recipe in families:
        for rule in recipe.rules:
            guard = _is_none_of(rule.only or recipe.algorithms)
            rules.append(cel(f"{guard} || ({rule.rule})", rule.message, field_path=rule.field_path))
        if recipe.data_fields:
            absent = " && ".join(f"!has(self.data.{name})" for name in recipe.data_fields)
            rules.append(
                cel(f"{_is_one_of(recipe.algorithms)} || ({absent})", recipe.data_fields_message, field_path=".data")
            )
    return rules


def _cel_regex(key: str) -> str:
    return key.replace(".", "\\\\.")


def _cel_keys(keys: list[str]) -> str:
    """A CEL regex group of dotted keys; keys of one section as ``section\\.(a|b)``."""
    parents = {key.rpartition(".")[0] for key in keys}
    if len(keys) > 1 and len(parents) == 1 and "" not in parents:
        (parent,) = parents
        names = "|".join(key.rpartition(".")[2] for key in keys)
        return f"({_cel_regex(parent)}\\\\.({names}))"
    return "(" + "|".join(_cel_regex(key) for key in keys) + ")"


def _spelled(keys: list[str]) -> str:
    """Keys for a message; keys of one section as ``section.{a, b}``."""
    parents = {key.rpartition(".")[0] for key in keys}
    if len(keys) > 1 and len(parents) == 1 and "" not in parents:
        return f"{parents.pop()}.{{{', '.join(key.rpartition('.')[2] for key in keys)}}}"
    return ", ".join(keys)


def _unless(algorithms: tuple[str, ...], every: tuple[str, ...], rule: str) -> str:
    # A run without verlOverrides (most) ends the rule at its first field access, before the algorithm's.
    absent = "!has(self.verlOverrides)"
    if set(algorithms) >= set(every):
        return f"{absent} || {rule}"
    return f"{absent} || {_is_none_of(algorithms)} || {rule}"


def owned_key_rules(families: tuple[Recipe, ...]) -> list[dict[str, str]]:
    """verlOverrides may not change a key the run's recipe owns, in any Hydra form (``key=``, ``+key=``, ``++key=``,
    ``~key``), nor replace or delete a section holding one. One rule per explanation (keys that share it together).
    """
    every = tuple(a for recipe in families for a in recipe.algorithms)
    owners: dict[tuple[str, str], list[str]] = {}  # (key, instead) -> algorithms
    sections: dict[str, list[str]] = {}  # a section holding an owned key -> algorithms
    for recipe in families:
        for owned in recipe.owned_keys:
            owners.setdefault((owned.key, owned.instead), []).extend(recipe.algorithms)
            for section in ancestors(owned.key):
                sections.setdefault(section, []).extend(recipe.algorithms)
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (key, instead), holders in owners.items():
        groups.setdefault((instead, tuple(dict.fromkeys(holders))), []).append(key)
    prefix = "self.verlOverrides.all(o, !o.matches('^[+~]{0,2}"
    rules = []
    for (instead, algorithms), keys in groups.items():
        verb = "is" if len(keys) == 1 else "are"
        rules.append(
            cel(
                _unless(algorithms, every, f"({prefix}{_cel_keys(keys)}([.=@]|$)')))"),
                f"{_spelled(keys)} {verb} Loka's to set: {instead}",
                field_path=".verlOverrides",
            )
        )
    by_algorithms: dict[tuple[str, ...], list[str]] = {}
    for section, holders in sections.items():
        by_algorithms.setdefault(tuple(dict.fromkeys(holders)), []).append(section)
    for algorithms, names in by_algorithms.items():
        rules.append(
            cel(
                _unless(algorithms, every, f"({prefix}{_cel_keys(names)}(@[^=]*)?(=|$)')))"),
                f"a verlOverride may not replace or delete a whole section holding keys Loka sets "
                f"({', '.join(names)}): override single keys inside it",
                field_path=".verlOverrides",
            )
        )
    return rules


def with_recipes(spec: JSONSchema, families: tuple[Recipe, ...]) -> JSONSchema:
    """spec.algorithm's values and the algorithm-dependent rules, from the registered recipes."""
    algorithm = spec["properties"]["algorithm"]
    algorithm.pop("maxLength", None)
    algorithm["enum"] = [a for recipe in families for a in recipe.algorithms]
    algorithm["description"] = "; ".join(recipe.summary for recipe in families) + "."
    rules = [*recipe_rules(families), *owned_key_rules(families)]
    spec["x-kubernetes-validations"] = [*spec.get("x-kubernetes-validations", []), *rules]
    return spec


def openapi_schema() -> JSONSchema:
    spec = with_recipes(model_schema(TrainingRunSpec), recipes())
    spec.pop("description", None)
    spec["description"] = "What to train, on what, and where it may run."
    return resource_schema(
        "A post-training run (verl GRPO or SFT on KubeRay, admitted by Kueue).",
        spec,
        model_schema(TrainingRunStatus),
        [name_rule(), lineage_rule(), *immutability_rules(spec)],
    )


def resource_schema(description: str, spec: JSONSchema, status: JSONSchema, rules: list[JSONSchema]) -> JSONSchema:
    """A custom resource's top-level schema: its spec (required), its status (no field required), its CEL rules."""
    status.pop("required", None)
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": rules,
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Reward", "type": "number", "jsonPath": ".status.metrics.rewardMean"},
    {"name": "Checkpoint", "type": "integer", "jsonPath": ".status.checkpoint.step"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queue.name"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `kubectl get -o wide`: what the run trains, the sft loss, and the run it started from.
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm", "priority": 1},
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss", "priority": 1},
    {"name": "Validation", "type": "number", "jsonPath": ".status.metrics.validationRewardMean", "priority": 1},
    {"name": "From", "type": "string", "jsonPath": ".spec.model.fromRun.name", "priority": 1},
]


def custom_resource_definition(  # noqa: PLR0917 - the names and columns of one kind, as the CRD lists them
    kind: str, plural: str, singular: str, short_names: Sequence[str], columns: list[dict[str, Any]], schema: JSONSchema
) -> dict[str, Any]:
    """One namespaced kind of this group, version v1alpha1 only, with a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "loka"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    return custom_resource_definition(KIND, PLURAL, SINGULAR, SHORT_NAMES, PRINTER_COLUMNS, openapi_schema())


def render_crd_yaml() -> str:
    header = "# Generated by `make crds` (python -m loka_api.crd) from loka_api.models. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def build_evaluation_crd() -> dict[str, Any]:
    """The Evaluation CRD (loka_api.evaluation): judges over a run's rollouts, run as a Job."""
    from loka_api.evaluation import (
        EVALUATION_KIND,
        EVALUATION_PLURAL,
        EVALUATION_PRINTER_COLUMNS,
        EVALUATION_SHORT_NAMES,
        EVALUATION_SINGULAR,
        EvaluationSpec,
        EvaluationStatus,
    )

    spec = model_schema(EvaluationSpec)
    spec["description"] = "Which run's rollouts to judge, by which judges, and where the scores go."
    schema = resource_schema(
        "LLM judges over a run's kept rollouts, writing scores and preferences (a Kueue-admitted Job).",
        spec,
        model_schema(EvaluationStatus),
        [
            cel(
                "self.spec == oldSelf.spec",
                "spec is immutable once the evaluation is created: delete and recreate it (a re-run skips what "
                "was already scored)",
                field_path=".spec",
                reason="FieldValueForbidden",
            )
        ],
    )
    return custom_resource_definition(
        EVALUATION_KIND,
        EVALUATION_PLURAL,
        EVALUATION_SINGULAR,
        EVALUATION_SHORT_NAMES,
        EVALUATION_PRINTER_COLUMNS,
        schema,
    )


def render_evaluation_crd_yaml() -> str:
    header = "# Generated by `make crds` (python -m loka_api.crd) from loka_api.evaluation. Do not edit.\n"
    return header + yaml.safe_dump(build_evaluation_crd(), sort_keys=False, width=120)


EVALUATION_CRD_PATH = Path("crds") / f"evaluations.{GROUP}.yaml"


def _without_rule(schema: JSONSchema, rule: str) -> JSONSchema:
    kept = [r for r in schema.pop("x-kubernetes-validations", []) if r["rule"] != rule]
    if kept:
        schema["x-kubernetes-validations"] = kept
    return schema


def build_reward_cycle_crd() -> dict[str, Any]:
    """The RewardCycle CRD (loka_api.cycle): its stage templates are the stages' own schemas (a TrainingRun spec
    with its recipes' rules, an Evaluation spec), less what the cycle fills in."""
    from loka_api.cycle import (
        MAX_CYCLE_NAME_LENGTH,
        REWARD_CYCLE_KIND,
        REWARD_CYCLE_PLURAL,
        REWARD_CYCLE_PRINTER_COLUMNS,
        REWARD_CYCLE_SHORT_NAMES,
        REWARD_CYCLE_SINGULAR,
        RewardCycleSpec,
        RewardCycleStatus,
        cycle_rules,
    )

    spec = model_schema(RewardCycleSpec)
    spec["description"] = "How many iterations, and the template of each stage."
    properties = spec["properties"]
    for template in ("rl", "rewardModel"):
        described = properties[template].get("description")
        properties[template] = with_recipes(properties[template], recipes())
        properties[template]["description"] = described
    # The cycle sets each reward model's data.fromEvaluation: its template has neither data source.
    _without_rule(properties["rewardModel"]["properties"]["data"], "has(self.train) != has(self.fromEvaluation)")
    # ... and each later burst's rewardModel.fromRun (unless it gives an endpoint): neither is required of reward.
    served = properties["reward"]["properties"]["rewardModel"]
    for rule in ("has(self.endpoint) != has(self.fromRun)", "!has(self.serving) || has(self.fromRun)"):
        _without_rule(served, rule)
    spec["x-kubernetes-validations"] = [*spec.get("x-kubernetes-validations", []), *cycle_rules()]
    templates = [name for name in properties if name != "iterations"]
    schema = resource_schema(
        "RL bursts, each judged by an Evaluation whose preferences train a reward model that rewards the next burst; "
        "the stages are TrainingRuns and Evaluations owned by the cycle.",
        spec,
        model_schema(RewardCycleStatus),
        [
            cel(
                f"size(self.metadata.name) <= {MAX_CYCLE_NAME_LENGTH} && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                f"metadata.name must start with a letter, use only lowercase letters, digits and '-', and be at most "
                f"{MAX_CYCLE_NAME_LENGTH} characters (its stages are named <name>-<iteration>-rl|eval|rm)",
                reason="FieldValueInvalid",
            ),
            *(
                cel(
                    f"self.spec.{name} == oldSelf.spec.{name}",
                    f"spec.{name} is immutable once the cycle is created (only spec.iterations may change)",
                    field_path=f".spec.{name}",
                    reason="FieldValueForbidden",
                )
                for name in templates
            ),
        ],
    )
    return custom_resource_definition(
        REWARD_CYCLE_KIND,
        REWARD_CYCLE_PLURAL,
        REWARD_CYCLE_SINGULAR,
        REWARD_CYCLE_SHORT_NAMES,
        REWARD_CYCLE_PRINTER_COLUMNS,
        schema,
    )


def render_reward_cycle_crd_yaml() -> str:
    header = "# Generated by `make crds` (python -m loka_api.crd) from loka_api.cycle. Do not edit.\n"
    return header + yaml.safe_dump(build_reward_cycle_crd(), sort_keys=False, width=120)


REWARD_CYCLE_CRD_PATH = Path("crds") / f"rewardcycles.{GROUP}.yaml"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_crd_yaml()
    if args and args[0] == "--stdout":
        sys.stdout.write(text)
        return 0
    target = Path(args[0]) if args else CRD_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    evaluation = target.parent / EVALUATION_CRD_PATH.name
    evaluation.write_text(render_evaluation_crd_yaml(), encoding="utf-8")
    print(f"wrote {evaluation}")
    cycle = target.parent / REWARD_CYCLE_CRD_PATH.name
    cycle.write_text(render_reward_cycle_crd_yaml(), encoding="utf-8")
    print(f"wrote {cycle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
