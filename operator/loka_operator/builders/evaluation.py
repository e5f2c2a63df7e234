"""The Job that runs an Evaluation: one CPU pod of the trainer image running ``loka-trainer evaluate``, admitted by
Kueue (its queue label; created suspended, Kueue unsuspends it), owned by the Evaluation, restricted pod security.

Each judge's API key reaches only this pod, by ``secretKeyRef`` as ``LOKA_JUDGE_API_KEY_<JUDGE>``; each judge's
rubric ConfigMap key is mounted read-only at ``EVALUATION_RUBRIC_DIR/<judge>``. No secret value is in the manifest.
"""

from __future__ import annotations

from typing import Any

from loka_api import contract, kinds, secret_routes
from loka_api.evaluation import EvaluationSpec
from loka_operator import naming
from loka_operator.builders.rayjob import _restricted_container_security, _restricted_pod_security
from loka_operator.children import EVALUATION_JOB, EVALUATOR_ROLE, EVALUATOR_ROLE_BINDING, EVALUATOR_SERVICE_ACCOUNT

Manifest = dict[str, Any]
CONTAINER = "evaluator"
RUBRICS_VOLUME = "rubrics"
# Judging is network-bound: a failed pod is not retried blindly (a re-run of the Evaluation skips what was scored).
BACKOFF_LIMIT = 1


def evaluation_env(spec: EvaluationSpec, *, name: str, namespace: str) -> list[Manifest]:
    env: list[Manifest] = [
        {"name": contract.ENV_EVALUATION_NAME, "value": name},
        {"name": contract.ENV_EVALUATION_NAMESPACE, "value": namespace},
    ]
    if spec.storage is not None and spec.storage.endpoint is not None:
        env.append({"name": contract.ENV_AWS_ENDPOINT, "value": spec.storage.endpoint})
    return env + secret_routes.env_for(secret_routes.of_evaluation(spec), secret_routes.Holder.EVALUATOR)


def build_evaluation_job(
    spec: EvaluationSpec, *, name: str, namespace: str, uid: str, service_account: str
) -> Manifest:
    """The Job of Evaluation ``namespace/name``; ``service_account`` may only get that Evaluation and patch its
    status (the evaluator reads nothing else: the operator resolved the rollouts into status.rolloutsURI).
    """
    job = EVALUATION_JOB.manifest(naming.evaluation_job_name(name), run=name, namespace=namespace, uid=uid)
    labels = dict(job["metadata"]["labels"])
    job_labels = job["metadata"]["labels"]
    if spec.queue is not None:
        job_labels[naming.KUEUE_QUEUE_LABEL] = spec.queue.name
        if spec.queue.priority_class is not None:
            job_labels[naming.KUEUE_PRIORITY_LABEL] = spec.queue.priority_class
    rubrics = [
        (judge.name, judge.rubric.config_map)
        for judge in spec.judges
        if judge.rubric is not None and judge.rubric.config_map is not None
    ]
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    if rubrics:
        volumes.append(
            {
                "name": RUBRICS_VOLUME,
                "projected": {
                    "sources": [
                        {"configMap": {"name": ref.name, "items": [{"key": ref.key, "path": judge}]}}
                        for judge, ref in rubrics
                    ]
                },
            }
        )
        mounts.append({"name": RUBRICS_VOLUME, "mountPath": contract.EVALUATION_RUBRIC_DIR, "readOnly": True})
    resources = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    return {
        **job,
        "spec": {
            # Kueue admits it: created suspended when queued, unsuspended on admission.
            "suspend": spec.queue is not None,
            "backoffLimit": BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": service_account,
                    # The evaluator patches its Evaluation's status: the only pod of this identity.
                    "automountServiceAccountToken": True,
                    "securityContext": _restricted_pod_security(),
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": spec.image,
                            "command": ["loka-trainer", "evaluate"],
                            "env": evaluation_env(spec, name=name, namespace=namespace),
                            "resources": {"requests": resources, "limits": resources},
                            "securityContext": _restricted_container_security(),
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def build_evaluator_identity(name: str, namespace: str, uid: str) -> list[Manifest]:
    """The evaluator pod's ServiceAccount, a Role that may only get this Evaluation and patch its status, and the
    binding between them (in that order: RBAC checks a binding's Role when it is created)."""
    account = naming.evaluator_account_name(name)
    evaluations = kinds.EVALUATION
    return [
        {
            **EVALUATOR_SERVICE_ACCOUNT.manifest(account, run=name, namespace=namespace, uid=uid),
            "automountServiceAccountToken": False,
        },
        {
            **EVALUATOR_ROLE.manifest(account, run=name, namespace=namespace, uid=uid),
            "rules": [
                {
                    "apiGroups": [evaluations.group],
                    "resources": [evaluations.plural],
                    "resourceNames": [name],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [evaluations.group],
                    "resources": [f"{evaluations.plural}/status"],
                    "resourceNames": [name],
                    "verbs": ["patch"],
                },
            ],
        },
        {
            **EVALUATOR_ROLE_BINDING.manifest(account, run=name, namespace=namespace, uid=uid),
            "roleRef": {"apiGroup": kinds.ROLE.group, "kind": kinds.ROLE.kind, "name": account},
            "subjects": [{"kind": kinds.SERVICE_ACCOUNT.kind, "name": account, "namespace": namespace}],
        },
    ]
