"""The contract between operator and trainer is written once, in `loka_api.contract`, and covers the status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from loka_api import TrainingRunStatus, contract

REPO = Path(__file__).resolve().parents[3]
SOURCES = [
    path
    for folder in ("api/loka_api", "operator/loka_operator", "trainer-image/loka_trainer", "cli/loka_cli")
    for path in sorted((REPO / folder).rglob("*.py"))
]
CONTRACT = REPO / "api" / "loka_api" / "contract.py"
CONTRACT_STRINGS = sorted(
    {
        contract.ENV_RUN_NAME,
        contract.ENV_RUN_NAMESPACE,
        contract.ENV_AWS_ENDPOINT,
        contract.ENV_AWS_KEY_ID,
        contract.ENV_AWS_SECRET,
        contract.ENV_AWS_SESSION_TOKEN,
        contract.ENV_WANDB_KEY,
        contract.ENV_HF_TOKEN,
        contract.ENV_RAY_AUTH_TOKEN,
        contract.SERVICE_ACCOUNT_DIR,
        contract.ENV_CHECKPOINT_PREFIX,
        contract.ENV_CHECKPOINT_KEEP,
        contract.ENV_CHECKPOINT_WRITER,
        contract.ENV_RUN_UID,
        contract.ENV_RAY_CLUSTER_NAME,
        contract.ENV_WANDB_MODE,
        contract.ENV_WORK_DIR,
        contract.MANIFEST_NAME,
        contract.MARKER_NAME,
        contract.STEP_FOLDER_PREFIX,
        contract.TRAINER_ENTRYPOINT,
    }
)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of ``path`` that is code, not a docstring (docstrings may mention the names)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("value", CONTRACT_STRINGS)
def test_each_contract_name_is_spelled_out_only_in_the_contract(value: str) -> None:
    spelled = [
        f"{path.relative_to(REPO)}:{line}"
        for path in SOURCES
        if path != CONTRACT
        for line, text in _code_strings(path)
        if text == value or (value == contract.STEP_FOLDER_PREFIX and value in text)
    ]
    assert not spelled, f"{value!r} is written again outside loka_api/contract.py: {spelled}"


def test_every_status_field_has_an_owner() -> None:
    wire_names = {field.alias or name for name, field in TrainingRunStatus.model_fields.items()}
    owned = set(contract.TRAINER_STATUS_FIELDS) | set(contract.OPERATOR_STATUS_FIELDS)
    assert wire_names == owned, f"unowned: {wire_names - owned}; not in the status: {owned - wire_names}"


def test_only_message_is_written_by_both_sides() -> None:
    assert contract.SHARED_STATUS_FIELDS == ("message",)


def test_checkpoint_prefix_is_the_run_under_its_namespace_keyed_by_its_uid() -> None:
    assert contract.run_checkpoint_prefix("s3://ckpt/", "team-a", "qwen", "7f1e") == "s3://ckpt/team-a/qwen/7f1e"
    assert contract.run_checkpoint_prefix("s3://ckpt/runs", "team-a", "qwen", "7f1e") == (
        "s3://ckpt/runs/team-a/qwen/7f1e"
    )
    assert contract.STEP_FOLDER.match(contract.step_folder(120))


def test_a_run_without_a_uid_has_no_checkpoint_prefix() -> None:
    with pytest.raises(ValueError, match="team-a/qwen has no uid"):
        contract.run_checkpoint_prefix("s3://ckpt/", "team-a", "qwen", "")
