"""The Secret routing table: every reference a spec can make, which pods get it under which variable, and the one
place that says so (the builders, the operator's check and docs/secrets.md all follow it)."""

from __future__ import annotations

import ast
from pathlib import Path

from loka_api import contract, secret_routes
from loka_api.evaluation import EvaluationSpec
from loka_api.secret_routes import Holder, SecretUse
from tests.unit.operator.test_builders import make_spec

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = (
    "api/loka_api",
    "operator/loka_operator",
    "trainer-image/loka_trainer",
    "client/loka_client",
    "cli/loka_cli",
)


def test_a_run_routes_each_secret_only_to_the_pods_that_use_it() -> None:
    assert secret_routes.of_run(make_spec()) == [
        SecretUse("AWS_ACCESS_KEY_ID", "loka-s3", "AWS_ACCESS_KEY_ID", (Holder.HEAD, Holder.WORKER, Holder.OPERATOR)),
        SecretUse(
            "AWS_SECRET_ACCESS_KEY", "loka-s3", "AWS_SECRET_ACCESS_KEY", (Holder.HEAD, Holder.WORKER, Holder.OPERATOR)
        ),
        SecretUse("WANDB_API_KEY", "loka-secrets", "wandb-api-key", (Holder.HEAD,)),
        SecretUse("HF_TOKEN", "loka-secrets", "hf-token", (Holder.HEAD, Holder.WORKER)),
    ]
    assert secret_routes.of_run(make_spec(storage=None, tracking=None, huggingface=None)) == []


def test_the_slack_webhook_is_checked_but_reaches_no_pod() -> None:
    slack = {"webhook": {"secret": "hooks", "key": "slack"}, "events": ["Failed"]}
    uses = secret_routes.of_run(make_spec(notifications={"slack": slack}))
    assert secret_routes.wanted(uses)["hooks"] == ["slack"]
    for holder in (Holder.HEAD, Holder.WORKER, Holder.SUBMITTER):
        assert all(e["valueFrom"]["secretKeyRef"]["name"] != "hooks" for e in secret_routes.env_for(uses, holder))


def test_an_evaluations_judge_keys_reach_only_its_own_pod() -> None:
    spec = EvaluationSpec.model_validate(
        {
            "image": "ghcr.io/acme/loka:rl-train",
            "rollouts": {"fromRun": "cycle-1-rl"},
            "output": {"uri": "s3://ckpt/evals/cycle-1"},
            "storage": {"credentialsSecret": "loka-s3"},
            "judges": [
                {
                    "name": "strict",
                    "endpoint": "http://judge.llm.svc:8000/v1",
                    "model": "judge",
                    "apiKey": {"secret": "judge-keys", "key": "openai"},
                },
                {"name": "open", "endpoint": "http://gateway.llm.svc/v1", "model": "judge"},
            ],
        }
    )
    uses = secret_routes.of_evaluation(spec)
    assert {u.variable: u.holders for u in uses} == {
        "AWS_ACCESS_KEY_ID": (Holder.EVALUATOR,),
        "AWS_SECRET_ACCESS_KEY": (Holder.EVALUATOR,),
        contract.judge_api_key_env("strict"): (Holder.EVALUATOR,),
    }
    assert secret_routes.wanted(uses) == {
        "loka-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        "judge-keys": ["openai"],
    }


def test_every_fixed_secret_variable_is_one_the_trainer_redacts() -> None:
    spec = make_spec()
    fixed = {u.variable for u in secret_routes.of_run(spec) if u.variable is not None}
    # The access key id names an identity (it is in every S3 request's Authorization header); the rest are secrets.
    assert fixed - {contract.ENV_AWS_KEY_ID} <= contract.SECRET_ENV


def test_docs_show_the_table_the_code_follows() -> None:
    docs = (ROOT / "docs/secrets.md").read_text()
    start, end = "<!-- secret-routes:start -->\n", "\n<!-- secret-routes:end -->"
    assert start in docs and end in docs, "docs/secrets.md lost its secret-routes markers"
    shown = docs[docs.index(start) + len(start) : docs.index(end)]
    assert shown == secret_routes.markdown_table(), (
        "docs/secrets.md's table differs from loka_api.secret_routes; paste the output of "
        "`python -c 'from loka_api import secret_routes; print(secret_routes.markdown_table())'`"
    )


def test_no_module_but_the_table_writes_a_secret_key_ref() -> None:
    """A pod's secret variable comes only from the routing table: no builder spells secretKeyRef itself."""
    spelled = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value == "secretKeyRef":
                    spelled.append(str(path.relative_to(ROOT)))
    assert spelled == ["api/loka_api/secret_routes.py"]
