"""Whose is an object that carries a child's name."""

from __future__ import annotations

from typing import Any

from loka_operator.naming import owner_reference
from loka_operator.ownership import Claim, claim


def owned_by(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "loka-run-qwen", "ownerReferences": list(refs)}}


def test_only_a_child_controlled_by_this_run_is_ours() -> None:
    assert claim(owned_by(owner_reference("qwen", "uid-2")), "qwen", "uid-2") is Claim.OURS


def test_a_child_of_an_earlier_run_of_the_same_name_is_waited_for() -> None:
    assert claim(owned_by(owner_reference("qwen", "uid-1")), "qwen", "uid-2") is Claim.PREVIOUS_RUN


def test_anything_else_is_foreign() -> None:
    assert claim({"metadata": {"name": "loka-run-qwen"}}, "qwen", "uid-2") is Claim.FOREIGN
    assert claim(owned_by(owner_reference("other", "uid-9")), "qwen", "uid-2") is Claim.FOREIGN
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "qwen", "uid": "d-1", "controller": True}
    assert claim(owned_by(deployment), "qwen", "uid-2") is Claim.FOREIGN
    # A non-controller reference to this run does not make it ours.
    assert claim(owned_by({**owner_reference("qwen", "uid-2"), "controller": False}), "qwen", "uid-2") is Claim.FOREIGN
