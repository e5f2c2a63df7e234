"""Whose is an object that already carries a child's name? Only a run's own children are ever patched.

- OURS: its controller owner is this run (this uid): reconcile it.
- PREVIOUS_RUN: its controller owner is an earlier run of the same name (deleted and recreated): garbage
  collection is removing it; wait, never adopt (it would be deleted under the new run).
- FOREIGN: anything else (no owner, another controller): leave it alone and say so (NameConflict).
"""

from __future__ import annotations

import enum
from typing import Any

from loka_api import kinds
from loka_api.kinds import Kind


class Claim(enum.Enum):
    OURS = "ours"
    PREVIOUS_RUN = "previous-run"
    FOREIGN = "foreign"


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


def claim(obj: dict[str, Any], run: str, uid: str, *, owner_kind: Kind = kinds.TRAINING_RUN) -> Claim:
    """Whose ``obj`` is, for the ``owner_kind`` object ``run`` of uid ``uid`` (a TrainingRun, or an Evaluation)."""
    owner = controller_of(obj)
    if owner is None:
        return Claim.FOREIGN
    if owner.get("uid") == uid:
        return Claim.OURS
    same_kind = owner_kind.owns(str(owner.get("apiVersion", "")), str(owner.get("kind", "")))
    return Claim.PREVIOUS_RUN if same_kind and owner.get("name") == run else Claim.FOREIGN
