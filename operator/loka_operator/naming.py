"""Names, labels, selectors and owner references of everything a TrainingRun owns: one place."""

from __future__ import annotations

from typing import Any

from loka_api import GROUP, kinds
from loka_api.kueue import JOB_UID_LABEL

OPERATOR_NAME = "loka-operator"

LABEL_RUN = f"{GROUP}/run"
# An Evaluation's children carry its name under their own key: never a run's label (a run's NetworkPolicy admits
# pods by `loka.dev/run`, and a run and an Evaluation may share a name).
LABEL_EVALUATION = f"{GROUP}/evaluation"
# A RewardCycle's stages (TrainingRuns and Evaluations) carry its name, their iteration and their stage.
LABEL_CYCLE = f"{GROUP}/cycle"
LABEL_CYCLE_ITERATION = f"{GROUP}/cycle-iteration"
LABEL_CYCLE_STAGE = f"{GROUP}/cycle-stage"
CYCLE_STAGE_COMPONENT = "cycle-stage"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
KUEUE_JOB_UID_LABEL = JOB_UID_LABEL  # the core reads Workloads by it (loka_api.kueue)

# Set by the API server on every namespace (Kubernetes 1.21+): a NetworkPolicy selects a namespace by name with it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

WORKER_GROUP = "workers"
# An MCP environment server a run brings (spec.environment.servers[].run): its pods' component, and the label that
# says which server a pod serves (a run may bring several).
ENVIRONMENT_COMPONENT = "environment"
LABEL_ENV_SERVER = f"{GROUP}/env-server"
# A reward model the operator serves for a run (spec.reward.components[].rewardModel.fromRun): its pods' component,
# and the label that says which reward component a pod serves.
REWARD_MODEL_COMPONENT = "reward-model"
LABEL_REWARD_MODEL = f"{GROUP}/reward-model"


def rayjob_name(run: str) -> str:
    return run


def service_account_name(run: str) -> str:
    return f"loka-run-{run}"


def role_name(run: str) -> str:
    return service_account_name(run)


def role_binding_name(run: str) -> str:
    return service_account_name(run)


def network_policy_name(run: str) -> str:
    return service_account_name(run)


def ray_auth_secret_name(run: str) -> str:
    """The Secret holding the run's Ray token (KubeRay reads its `auth_token` key)."""
    return f"{service_account_name(run)}-ray-token"


def environment_quota_group(server: str) -> str:
    """The RayJob's worker group that holds an environment server's Kueue quota (it starts no pods)."""
    return f"env-{server}"


def environment_pod_labels(run: str, server: str) -> dict[str, str]:
    """The labels of an environment server's pods: the run's (its NetworkPolicy admits only the run's pods), the
    component, and the server (its Service selects on all of them)."""
    return {**run_labels(run, ENVIRONMENT_COMPONENT), LABEL_ENV_SERVER: server}


def reward_model_quota_group(component: str) -> str:
    """The RayJob's worker group that holds a served reward model's Kueue quota (it starts no pods)."""
    return f"rm-{component.replace('_', '-')}"


def reward_model_pod_labels(run: str, component: str) -> dict[str, str]:
    """The labels of a served reward model's pods: the run's (its NetworkPolicy admits only the run's pods), the
    component, and the reward component served (its Service selects on all of them)."""
    return {**run_labels(run, REWARD_MODEL_COMPONENT), LABEL_REWARD_MODEL: component.replace("_", "-")}


def run_pods_selector(run: str) -> dict[str, Any]:
    """Every pod of the run: KubeRay copies the template labels onto head, worker and submitter pods."""
    return {"matchLabels": {LABEL_RUN: run}}


def _labels(key: str, owner: str, component: str) -> dict[str, str]:
    """What the operator puts on a child: whose it is (a run, an Evaluation, a cycle by ``key``), and what it is."""
    return {key: owner, LABEL_MANAGED_BY: OPERATOR_NAME, LABEL_PART_OF: "loka", LABEL_COMPONENT: component}


def _controller_reference(kind: kinds.Kind, name: str, uid: str, *, block_owner_deletion: bool) -> dict[str, Any]:
    reference: dict[str, Any] = {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "name": name,
        "uid": uid,
        "controller": True,
    }
    if block_owner_deletion:
        reference["blockOwnerDeletion"] = True
    return reference


def run_labels(run: str, component: str) -> dict[str, str]:
    return _labels(LABEL_RUN, run, component)


def owner_reference(run: str, uid: str) -> dict[str, Any]:
    return _controller_reference(kinds.TRAINING_RUN, run, uid, block_owner_deletion=True)


def rayjob_owner_reference(rayjob: str, uid: str) -> dict[str, Any]:
    """No blockOwnerDeletion: that would need `update` on rayjobs/finalizers, and nothing waits on it."""
    return _controller_reference(kinds.RAY_JOB, rayjob, uid, block_owner_deletion=False)


def evaluation_labels(evaluation: str, component: str) -> dict[str, str]:
    return _labels(LABEL_EVALUATION, evaluation, component)


def evaluation_job_name(evaluation: str) -> str:
    return f"{evaluation}-eval"


def evaluation_of_job(job: str) -> str | None:
    """The Evaluation whose Job this name is (evaluation_job_name's inverse)."""
    return job.removesuffix("-eval") if job.endswith("-eval") else None


def evaluator_account_name(evaluation: str) -> str:
    """The evaluator pod's ServiceAccount, and its Role and RoleBinding."""
    return f"loka-eval-{evaluation}"


def evaluation_owner_reference(evaluation: str, uid: str) -> dict[str, Any]:
    return _controller_reference(kinds.EVALUATION, evaluation, uid, block_owner_deletion=True)


def cycle_labels(cycle: str, component: str) -> dict[str, str]:
    return _labels(LABEL_CYCLE, cycle, component)


def cycle_owner_reference(cycle: str, uid: str) -> dict[str, Any]:
    return _controller_reference(kinds.REWARD_CYCLE, cycle, uid, block_owner_deletion=True)


def run_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def split_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name
