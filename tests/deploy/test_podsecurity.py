"""The restricted-v2 checker itself: it must refuse what the SCC refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.podsecurity import pod_specs, restricted_violations

GOOD: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "volumes": [{"name": "tmp", "emptyDir": {}}],
    "containers": [
        {
            "name": "main",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
}


def test_a_restricted_pod_passes() -> None:
    assert restricted_violations(GOOD) == []


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("securityContext", "runAsUser"), 1000, "runAsUser"),
        (("securityContext", "fsGroup"), 1000, "fsGroup"),
        (("securityContext", "runAsNonRoot"), False, "runAsNonRoot"),
        (("securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile"),
        (("hostNetwork",), True, "hostNetwork"),
        (("containers", 0, "securityContext", "privileged"), True, "privileged"),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
        (("containers", 0, "securityContext", "capabilities"), {"drop": ["NET_RAW"]}, "drop"),
        (("containers", 0, "securityContext", "capabilities", "add"), ["SYS_ADMIN"], "SYS_ADMIN"),
        (("containers", 0, "securityContext", "runAsUser"), 0, "runAsUser"),
        (("containers", 0, "ports"), [{"name": "p", "containerPort": 80, "hostPort": 80}], "hostPort"),
        (("volumes",), [{"name": "root", "hostPath": {"path": "/"}}], "hostPath"),
    ],
)
def test_each_restricted_v2_breach_is_reported(path: tuple[str | int, ...], value: object, complaint: str) -> None:
    pod = copy.deepcopy(GOOD)
    node: Any = pod
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    problems = restricted_violations(pod)
    assert any(complaint in p for p in problems), problems


def test_an_init_container_without_a_security_context_is_reported() -> None:
    pod = copy.deepcopy(GOOD)
    pod["initContainers"] = [{"name": "wait"}]
    assert any("initContainers[wait]" in p for p in restricted_violations(pod))


def test_rayjob_head_workers_and_submitter_are_all_checked() -> None:
    template = {"spec": GOOD}
    rayjob = {
        "kind": "RayJob",
        "metadata": {"name": "r"},
        "spec": {
            "rayClusterSpec": {
                "headGroupSpec": {"template": template},
                "workerGroupSpecs": [{"groupName": "gpu", "template": template}],
            },
            "submitterPodTemplate": template,
        },
    }
    assert [where for where, _ in pod_specs(rayjob)] == [
        "RayJob/r.headGroupSpec",
        "RayJob/r.workerGroupSpecs[gpu]",
        "RayJob/r.submitterPodTemplate",
    ]
