"""Every kind of object a TrainingRun, an Evaluation or a RewardCycle has, declared once: the one place a new child
kind is added.

An entry says which Kubernetes kind it is (`loka_api.kinds`), whether the run owns it (the operator creates it,
labelled and owned by the run) or only observes it (made by someone else for the run: Kueue's Workload for its
RayJob), which of its fields the cache keeps, how an object of it leads back to its run, which of its fields the
operator patches back when they drift, and which API verbs the operator uses on it. From the entries follow:

- the watch-backed cache (`cache.Children`: trimming, and the startup LIST per kind in `cache.prime`);
- the kopf watch handlers (`handlers.watch_children`: one registration per entry) and their label selectors;
- the inverse map from a child to its run (`ChildKind.run_of`);
- the chart's RBAC (`tests/deploy/operator_api.py` reads the verbs from here; the chart test compares them).

A side service a run brings (an environment server, a judge, a reward-model server as a Deployment and a
Service) is one entry here per kind (`kinds.DEPLOYMENT`, `kinds.SERVICE`: owned, with its component) whose `build`
is its builder: the reconciler ensures what the builder returns before the RayJob (`Reconciler._ensure_side_services`),
and the watch, the cache and the RBAC follow as for every entry. Its pods carry the run's labels
(`naming.run_labels`), so the run's NetworkPolicy admits only the run's own pods to them.

A RewardCycle's stages are Loka's own TrainingRuns and Evaluations (`CYCLE_STAGES`): their entries grant the verbs
and say how a stage leads back to its cycle, but add no watch (`watched=False`): the operator watches and caches
every run and Evaluation already, and those handlers hand a stage's events to its cycle.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loka_api import kinds
from loka_api.kinds import Kind
from loka_operator import naming

if TYPE_CHECKING:
    from loka_api import TrainingRun
    from loka_operator.config import OperatorConfig

JSON = dict[str, Any]
# A side service's builder: the manifests of its kind the run should have ([] when its spec asks for none).
SideServiceBuilder = Callable[["TrainingRun", "OperatorConfig"], list[JSON]]

# What the cache keeps of every child's metadata: what reconcile reads, nothing more.
KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
)
# kubectl's copy of the applied manifest: as large as the object's spec, and read by nobody here.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# The verbs the watch-backed cache needs on every child kind (the startup LIST, then the watch).
CACHE_VERBS = frozenset({"list", "watch"})


class Relation(enum.Enum):
    OWNED = "owned"  # the operator creates it, labelled with the run and its component, owned by the run
    OBSERVED = "observed"  # someone else makes it for the run (Kueue's Workload for the run's RayJob)


def by_run_label(body: Mapping[str, Any]) -> str | None:
    """The run an owned child belongs to: its `loka.dev/run` label."""
    meta = body.get("metadata") or {}
    run = (meta.get("labels") or {}).get(naming.LABEL_RUN)
    return naming.run_key(meta.get("namespace") or "", run) if run else None


def by_evaluation_label(body: Mapping[str, Any]) -> str | None:
    """The Evaluation an owned child of an Evaluation belongs to: its `loka.dev/evaluation` label."""
    meta = body.get("metadata") or {}
    evaluation = (meta.get("labels") or {}).get(naming.LABEL_EVALUATION)
    return naming.run_key(meta.get("namespace") or "", evaluation) if evaluation else None


def by_cycle_label(body: Mapping[str, Any]) -> str | None:
    """The RewardCycle a stage (a TrainingRun or an Evaluation) belongs to: its `loka.dev/cycle` label."""
    meta = body.get("metadata") or {}
    cycle = (meta.get("labels") or {}).get(naming.LABEL_CYCLE)
    return naming.run_key(meta.get("namespace") or "", cycle) if cycle else None


def by_owning_rayjob(body: Mapping[str, Any]) -> str | None:
    """The run of an object Kueue made for a RayJob: the RayJob that owns it (a run's RayJob carries the run's
    name)."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if kinds.RAY_JOB.owns(str(ref.get("apiVersion", "")), str(ref.get("kind", ""))):
            return naming.run_key(meta.get("namespace") or "", ref.get("name", ""))
    return None


@dataclass(frozen=True, eq=False)
class ChildKind:
    """One kind of child of a run, and everything the operator's machinery needs to know about it."""

    kind: Kind
    relation: Relation
    # Top-level fields the cache keeps, each whole (None) or only the listed keys; metadata is always kept.
    kept: Mapping[str, tuple[str, ...] | None]
    # The API verbs the reconciler uses on it, beyond the cache's list and watch (the chart must grant them).
    verbs: frozenset[str]
    # The `app.kubernetes.io/component` label an owned child carries (builders set it, the watch filters on it).
    component: str | None = None
    # Top-level fields the operator owns and patches back when someone changed them.
    repaired: tuple[str, ...] = ()
    # The inverse map: the run (namespace/name) an object of this kind belongs to, or None when it is no run's.
    run_of: Callable[[Mapping[str, Any]], str | None] = field(default=by_run_label)
    # A side service's builder: the reconciler ensures what it returns before the RayJob (whose pods use the service).
    # None: the reconciler builds objects of this kind in a step of its own.
    build: SideServiceBuilder | None = None
    # An observed kind made for another child of the run (Kueue's Workload for its RayJob): an object of it is the
    # run's only when that child owns it. Any RayJob's Workload names a "run" (its RayJob's name); the cache keeps
    # only those of the run's own RayJob.
    made_for: ChildKind | None = None
    # The kind of object it is a child of: a TrainingRun, an Evaluation or a RewardCycle (whose reconcilers keep their
    # own children).
    parent: Kind = kinds.TRAINING_RUN
    # False for one of Loka's own kinds, which the operator watches and caches whole as a parent already (a cycle's
    # TrainingRuns and Evaluations): no watch of its own, whose label selector would narrow the parent kind's watch;
    # the parent kind's handler hands a stage's events to its cycle.
    watched: bool = True

    def __post_init__(self) -> None:
        if self.parent not in PARENTS:
            raise ValueError(f"child kind {self.kind.kind}: no reconciler keeps children of {self.parent.kind}")
        if self.build is not None and (self.relation is not Relation.OWNED or not {"get", "create"} <= self.verbs):
            raise ValueError(f"side service kind {self.kind.kind} must be owned, with the get and create verbs")
        if self.relation is Relation.OWNED and self.component is None:
            raise ValueError(f"owned child kind {self.kind.kind} needs a component label")
        if self.repaired and "patch" not in self.verbs:
            raise ValueError(f"child kind {self.kind.kind} repairs {self.repaired} without the patch verb")

    @property
    def name(self) -> str:
        """Its `kind`, as objects and messages say it (RayJob, Workload, ...)."""
        return self.kind.kind

    @property
    def labels(self) -> dict[str, str]:
        """The labels every object of it carries, which its watch and startup LIST filter on (on the server)."""
        if self.component is None:
            return {}
        return {naming.LABEL_MANAGED_BY: naming.OPERATOR_NAME, naming.LABEL_COMPONENT: self.component}

    @property
    def selector(self) -> str:
        """`labels` as a label selector."""
        return ",".join(f"{k}={v}" for k, v in self.labels.items())

    @property
    def all_verbs(self) -> frozenset[str]:
        """Every verb the operator needs on it: the cache's and the reconciler's."""
        return CACHE_VERBS | self.verbs

    def manifest(self, name: str, *, run: str, namespace: str, uid: str) -> JSON:
        """The start of an owned child's manifest: its kind, name, the run's labels and the run as its owner."""
        assert self.component is not None, f"{self.name} is observed, not built"
        if self.parent == kinds.EVALUATION:
            labels = naming.evaluation_labels(run, self.component)
            owner = naming.evaluation_owner_reference(run, uid)
        elif self.parent == kinds.REWARD_CYCLE:
            labels, owner = naming.cycle_labels(run, self.component), naming.cycle_owner_reference(run, uid)
        else:
            labels, owner = naming.run_labels(run, self.component), naming.owner_reference(run, uid)
        return {
            "apiVersion": self.kind.api_version,
            "kind": self.kind.kind,
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        }

    def drifted(self, desired: Mapping[str, Any], existing: Mapping[str, Any]) -> JSON:
        """The repaired fields whose desired value the object no longer holds (what the API server defaulted beside
        it, such as a container's imagePullPolicy, is not drift)."""
        return {k: desired[k] for k in self.repaired if not holds(existing.get(k), desired[k])}

    def trimmed(self, body: Mapping[str, Any]) -> JSON:
        """An object of this kind as the cache keeps it: the fields reconcile reads (None: the whole field)."""
        meta = body.get("metadata") or {}
        out: JSON = {"metadata": {k: meta[k] for k in KEPT_METADATA if k in meta}}
        if LAST_APPLIED in (meta.get("annotations") or {}):
            kept = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
            out["metadata"]["annotations"] = kept
        for name, keys in self.kept.items():
            value = body.get(name)
            if value is None:
                continue
            out[name] = dict(value) if keys is None and isinstance(value, dict) else value
            if keys is not None and isinstance(value, dict):
                out[name] = {k: value[k] for k in keys if k in value}
        return out


def holds(existing: Any, desired: Any) -> bool:
    """Whether ``existing`` has every value ``desired`` sets: maps may hold more keys, lists the same items."""
    if isinstance(desired, Mapping):
        return isinstance(existing, Mapping) and all(holds(existing.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(desired)
            and all(holds(e, d) for e, d in zip(existing, desired, strict=True))
        )
    return bool(existing == desired)


# The kinds whose objects have children: each has a reconciler that keeps them.
PARENTS = (kinds.TRAINING_RUN, kinds.EVALUATION, kinds.REWARD_CYCLE)

# The per-run identity of the trainer and the run's network isolation share these components.
TRAINER_IDENTITY = "trainer-identity"
ISOLATION = "network-policy"

RAY_JOB = ChildKind(
    kinds.RAY_JOB,
    Relation.OWNED,
    # A RayJob's pod templates are most of its bytes: reconcile reads its restarts, suspend and status.
    kept={"spec": ("backoffLimit", "suspend"), "status": None},
    # patch: backoffLimit and suspend follow the spec; delete: after ttlSecondsAfterFinished, or a planted token.
    verbs=frozenset({"get", "create", "patch", "delete"}),
    component="rayjob",
)
WORKLOAD = ChildKind(
    kinds.WORKLOAD,
    Relation.OBSERVED,
    kept={"spec": ("active",), "status": ("conditions",)},
    # patch: suspending a queued run deactivates its Workload (spec.active).
    verbs=frozenset({"patch"}),
    run_of=by_owning_rayjob,
    made_for=RAY_JOB,
)
SERVICE_ACCOUNT = ChildKind(
    kinds.SERVICE_ACCOUNT,
    Relation.OWNED,
    kept={},
    verbs=frozenset({"get", "create"}),
    component=TRAINER_IDENTITY,
)
ROLE = ChildKind(
    kinds.ROLE,
    Relation.OWNED,
    kept={"rules": None},
    verbs=frozenset({"get", "create", "patch"}),
    component=TRAINER_IDENTITY,
    repaired=("rules",),
)
ROLE_BINDING = ChildKind(
    kinds.ROLE_BINDING,
    Relation.OWNED,
    kept={"roleRef": None, "subjects": None},
    verbs=frozenset({"get", "create", "patch"}),
    component=TRAINER_IDENTITY,
    repaired=("subjects",),
)
NETWORK_POLICY = ChildKind(
    kinds.NETWORK_POLICY,
    Relation.OWNED,
    kept={"spec": None},
    verbs=frozenset({"get", "create", "patch"}),
    component=ISOLATION,
    repaired=("spec",),
)


def _environment_deployments(run: TrainingRun, config: OperatorConfig) -> list[JSON]:
    from loka_operator.builders.environment import build_environment_deployments  # builders import this module

    return build_environment_deployments(run, config)


def _environment_services(run: TrainingRun, config: OperatorConfig) -> list[JSON]:
    from loka_operator.builders.environment import build_environment_services  # builders import this module

    return build_environment_services(run, config)


def _served(
    component: str, deployments: SideServiceBuilder, services: SideServiceBuilder
) -> tuple[ChildKind, ChildKind]:
    """A server the operator runs for a run: its Deployment and Service, told apart from another server's by their
    component label."""
    server = ChildKind(
        kinds.DEPLOYMENT,
        Relation.OWNED,
        kept={"spec": ("replicas", "selector", "template"), "status": ("readyReplicas",)},
        # patch: its replicas follow the run's admission, and a changed template is put back.
        verbs=frozenset({"get", "create", "patch"}),
        component=component,
        repaired=("spec",),
        build=deployments,
    )
    service = ChildKind(
        kinds.SERVICE,
        Relation.OWNED,
        kept={"spec": ("selector", "ports")},
        verbs=frozenset({"get", "create", "patch"}),
        component=component,
        repaired=("spec",),
        build=services,
    )
    return server, service


# The MCP environment servers a run brings (spec.environment.servers[].run), `builders/environment.py`.
ENVIRONMENT_SERVER, ENVIRONMENT_SERVICE = _served(
    naming.ENVIRONMENT_COMPONENT, _environment_deployments, _environment_services
)


def _reward_model_deployments(run: TrainingRun, config: OperatorConfig) -> list[JSON]:
    from loka_operator.builders.reward_model import build_reward_model_deployments  # builders import this module

    return build_reward_model_deployments(run, config)


def _reward_model_services(run: TrainingRun, config: OperatorConfig) -> list[JSON]:
    from loka_operator.builders.reward_model import build_reward_model_services  # builders import this module

    return build_reward_model_services(run, config)


# The reward models the operator serves for a run (spec.reward.components[].rewardModel.fromRun),
# `builders/reward_model.py`: the same kinds as the environment servers, told apart by their component label.
REWARD_MODEL_SERVER, REWARD_MODEL_SERVICE = _served(
    naming.REWARD_MODEL_COMPONENT, _reward_model_deployments, _reward_model_services
)

# An Evaluation's children: its Job, and the evaluator's identity (the same kinds and verbs as a run's trainer
# identity, told apart by the `loka.dev/evaluation` label). Its Kueue Workload is not watched: a suspended Job is
# a queued one.
EVALUATION_JOB = ChildKind(
    kinds.JOB,
    Relation.OWNED,
    kept={"spec": ("suspend",), "status": None},
    verbs=frozenset({"get", "create"}),
    component="evaluation",
    run_of=by_evaluation_label,
    parent=kinds.EVALUATION,
)
EVALUATOR_SERVICE_ACCOUNT = ChildKind(
    kinds.SERVICE_ACCOUNT,
    Relation.OWNED,
    kept={},
    verbs=SERVICE_ACCOUNT.verbs,
    component=TRAINER_IDENTITY,
    run_of=by_evaluation_label,
    parent=kinds.EVALUATION,
)
EVALUATOR_ROLE = ChildKind(
    kinds.ROLE,
    Relation.OWNED,
    kept={"rules": None},
    verbs=ROLE.verbs,
    component=TRAINER_IDENTITY,
    run_of=by_evaluation_label,
    parent=kinds.EVALUATION,
)
EVALUATOR_ROLE_BINDING = ChildKind(
    kinds.ROLE_BINDING,
    Relation.OWNED,
    kept={"roleRef": None, "subjects": None},
    verbs=ROLE_BINDING.verbs,
    component=TRAINER_IDENTITY,
    run_of=by_evaluation_label,
    parent=kinds.EVALUATION,
)

# A RewardCycle's stages: the TrainingRuns and Evaluations it stamps out, owns, and never changes after (each then
# lives on its own). The operator's run and Evaluation caches hold them; the cycle reads them there.
CYCLE_RUN = ChildKind(
    kinds.TRAINING_RUN,
    Relation.OWNED,
    kept={},
    verbs=frozenset({"get", "create"}),
    component=naming.CYCLE_STAGE_COMPONENT,
    run_of=by_cycle_label,
    parent=kinds.REWARD_CYCLE,
    watched=False,
)
CYCLE_EVALUATION = ChildKind(
    kinds.EVALUATION,
    Relation.OWNED,
    kept={},
    verbs=frozenset({"get", "create"}),
    component=naming.CYCLE_STAGE_COMPONENT,
    run_of=by_cycle_label,
    parent=kinds.REWARD_CYCLE,
    watched=False,
)

# Every child kind the operator watches, caches and is granted; a side service's kinds go at the end. (The run's Ray
# token Secret is not here: it is owned by the RayJob, and Secrets are never watched, so that no value is cached.)
CHILDREN: tuple[ChildKind, ...] = (
    RAY_JOB,
    WORKLOAD,
    SERVICE_ACCOUNT,
    ROLE,
    ROLE_BINDING,
    NETWORK_POLICY,
    ENVIRONMENT_SERVER,
    ENVIRONMENT_SERVICE,
    REWARD_MODEL_SERVER,
    REWARD_MODEL_SERVICE,
)
EVALUATION_CHILDREN: tuple[ChildKind, ...] = (
    EVALUATION_JOB,
    EVALUATOR_SERVICE_ACCOUNT,
    EVALUATOR_ROLE,
    EVALUATOR_ROLE_BINDING,
)
CYCLE_STAGES: tuple[ChildKind, ...] = (CYCLE_RUN, CYCLE_EVALUATION)
# What the chart's RBAC covers: every entry, whichever kind it is a child of; the watches and the startup LIST cover
# the `watched` ones.
REGISTRY: tuple[ChildKind, ...] = (*CHILDREN, *EVALUATION_CHILDREN, *CYCLE_STAGES)
