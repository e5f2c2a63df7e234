"""The NetworkPolicy evaluator the isolation tests prove the run's policy with, against the API's documented rules."""

from __future__ import annotations

from typing import Any

from tests.operator.networkpolicy import Endpoint, admits, selects

APP = Endpoint("prod", {"app": "db"})
FRONTEND = Endpoint("prod", {"role": "frontend"})
MONITORING = Endpoint("monitoring", {"app": "prometheus"}, {"team": "ops"})


def policy(spec: dict[str, Any], namespace: str = "prod") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": {"podSelector": {}, **spec}}


def test_a_pod_no_policy_selects_admits_everything() -> None:
    assert admits([policy({"ingress": []}, namespace="other")], APP, MONITORING, 5432)


def test_an_empty_ingress_list_isolates_and_admits_nothing() -> None:
    assert not admits([policy({"policyTypes": ["Ingress"], "ingress": []})], APP, FRONTEND, 5432)


def test_a_rule_without_from_or_ports_admits_every_source_and_port() -> None:
    assert admits([policy({"policyTypes": ["Ingress"], "ingress": [{}]})], APP, MONITORING, 1)


def test_a_pod_selector_alone_means_the_policys_own_namespace() -> None:
    rules = [policy({"policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]})]
    assert admits(rules, APP, FRONTEND, 5432)
    assert not admits(rules, APP, MONITORING, 5432)


def test_namespace_and_pod_selector_in_one_peer_must_both_match_but_two_peers_are_either() -> None:
    both = {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "x"}}}
    assert not admits([policy({"ingress": [{"from": [both]}]})], APP, MONITORING, 80)
    either = [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}, {"podSelector": {"matchLabels": {"app": "x"}}}]
    assert admits([policy({"ingress": [{"from": either}]})], APP, MONITORING, 80)


def test_ports_protocols_and_port_ranges() -> None:
    ranged = [policy({"ingress": [{"ports": [{"protocol": "TCP", "port": 10002, "endPort": 19999}]}]})]
    assert admits(ranged, APP, FRONTEND, 10002) and admits(ranged, APP, FRONTEND, 19999)
    assert not admits(ranged, APP, FRONTEND, 20000)
    assert not admits(ranged, APP, FRONTEND, 10002, protocol="UDP")


def test_selectors_match_labels_and_expressions() -> None:
    labels = {"tier": "ray", "node": "head"}
    assert selects({"matchExpressions": [{"key": "node", "operator": "In", "values": ["head", "worker"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, labels)
    assert selects({"matchLabels": {"tier": "ray"}, "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]},
                   labels)  # fmt: skip
