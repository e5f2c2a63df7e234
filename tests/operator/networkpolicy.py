"""What a CNI that implements NetworkPolicy decides for one ingress connection, per the Kubernetes API's rules.

The local control plane has no network plugin (KWOK pods have no network), so the run's policy is proven by
its content: this evaluates real NetworkPolicy objects against real pod labels, for ingress over TCP/UDP.
Semantics (k8s.io/api networking/v1): a pod selected by any policy with policyTypes Ingress is isolated and
admits exactly what the union of those policies' rules allows; a rule without `from` admits every source and
one without `ports` every port; a `podSelector` peer alone means pods of the policy's own namespace, a
`namespaceSelector` alone every pod of the matching namespaces, both together the matching pods there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Labels = dict[str, str]


@dataclass(frozen=True)
class Endpoint:
    """A pod as a policy sees it: its namespace (and that namespace's labels) and its own labels."""

    namespace: str
    labels: Labels
    namespace_labels: Labels = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The API server sets this label on every namespace (Kubernetes 1.21+).
        self.namespace_labels.setdefault("kubernetes.io/metadata.name", self.namespace)


def selects(selector: dict[str, Any] | None, labels: Labels) -> bool:
    """A LabelSelector: matchLabels and matchExpressions must all hold; an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_namespace: str, source: Endpoint) -> bool:
    if "ipBlock" in peer:
        return False  # pod IPs are not modelled; the run's policy uses none
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], source.namespace_labels)
    else:
        in_namespace = source.namespace == policy_namespace
    return in_namespace and ("podSelector" not in peer or selects(peer["podSelector"], source.labels))


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for rule in ports:
        if rule.get("protocol", "TCP") != protocol:
            continue
        first = rule.get("port")
        if first is None:
            return True
        if not isinstance(first, int):
            raise ValueError(f"named port {first!r} is not modelled")
        if first <= port <= rule.get("endPort", first):
            return True
    return False


def admits(
    policies: list[dict[str, Any]], target: Endpoint, source: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether `source` may open `port` on `target` under `policies` (all of them, any namespace)."""
    isolating = [
        p
        for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and selects(p["spec"].get("podSelector"), target.labels)
        and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
    ]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get("ingress") or []:
            sources = rule.get("from")
            from_ok = not sources or any(
                _peer_matches(peer, policy["metadata"]["namespace"], source) for peer in sources
            )
            if from_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def isolated(policies: list[dict[str, Any]], target: Endpoint) -> bool:
    return any(
        p["metadata"]["namespace"] == target.namespace and selects(p["spec"].get("podSelector"), target.labels)
        for p in policies
    )
