"""`loka init NAME --env URL` against a real MCP environment: the tools listed, a run that validates, a prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loka_api import TrainingRun
from loka_cli.main import main
from tests.unit.agents.conftest import McpEnv


def test_init_lists_the_tools_and_writes_an_agent_run_with_its_prompt(
    mcp_env: McpEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"ENV_API_KEY={mcp_env.token}\n")
    code = main([
        "init", "agent", "-n", "team", "--gpus", "0", "--env", mcp_env.url,
        "--env-header", "Authorization=Bearer ${ENV_API_KEY}", "--env-secret", "ENV_API_KEY=env-key/token",
        "--env-file", str(tmp_path / ".env"),
    ])  # fmt: skip
    assert code == 0
    run = TrainingRun.model_validate(yaml.safe_load((tmp_path / "agent.yaml").read_text()))
    environment = run.spec.environment
    assert environment is not None
    assert environment.servers[0].url == mcp_env.url
    assert environment.servers[0].headers == {"Authorization": "Bearer ${ENV_API_KEY}"}  # a reference, not the key
    assert environment.secret_variables[0].secret_ref.secret == "env-key"
    assert environment.allowed_hosts == [mcp_env.url.split("/")[2]]
    assert run.spec.reward is not None and run.spec.reward.components is not None
    assert [(c.name, c.weight) for c in run.spec.reward.components] == [
        ("task_completion", 0.8), ("tool_execution", 0.1), ("format_compliance", 0.1)
    ]  # fmt: skip
    configmap = yaml.safe_load((tmp_path / "agent-prompt.yaml").read_text())
    prompt = configmap["data"]["system.txt"]
    assert "- add: Add n to the counter" in prompt
    assert "- setup" not in prompt and "- evaluate" not in prompt  # lifecycle tools: the loop's, not the model's
    assert "<tool_call>" not in prompt  # the chat template, not the prompt, says how to call a tool
    written = "".join(p.read_text() for p in tmp_path.glob("agent*"))
    assert mcp_env.token not in written and mcp_env.token not in capsys.readouterr().out


def test_init_previews_the_prompt_in_the_models_chat_template(
    mcp_env: McpEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loka_trainer.tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENV_API_KEY", mcp_env.token)
    code = main(["init", "agent", "-n", "team", "--env", mcp_env.url, "--env-header",
                 "Authorization=Bearer ${ENV_API_KEY}", "--tokenizer", str(tmp_path / "tok")])  # fmt: skip
    assert code == 0
    preview = (tmp_path / "agent-prompt-preview.txt").read_text()
    assert "<tools>" in preview and '"name": "inspect"' in preview and '"$defs"' in preview


def test_init_says_when_the_environment_cannot_be_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localcluster.operator_process import free_port

    monkeypatch.chdir(tmp_path)
    code = main(["init", "agent", "-n", "team", "--env", f"http://127.0.0.1:{free_port()}/mcp"])
    assert code == 4
    assert not (tmp_path / "agent.yaml").exists()


def test_dataset_takes_the_allowed_hosts_from_the_run(
    mcp_env: McpEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    run = {"apiVersion": "loka.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "agent", "namespace": "t"},
           "spec": {"image": "i", "model": {"uri": "hf://o/m"}, "data": {"train": "s3://b/t.parquet"},
                    "environment": {"servers": [{"name": "env", "url": mcp_env.url}]}}}  # fmt: skip
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(run))
    task = {"id": "t1", "prompt": "Reach 3", "mcp_config": {"env": {"url": mcp_env.url}},
            "setup_tool": {"name": "setup", "arguments": {"target": 3}}}  # fmt: skip
    (tmp_path / "ok.json").write_text(json.dumps([task]))
    assert main(["dataset", "ok.json", "-o", "ok", "--run", "agent.yaml", "--validation-fraction", "0"]) == 0
    elsewhere = {**task, "mcp_config": {"env": {"url": "http://169.254.169.254/mcp"}}}
    (tmp_path / "bad.json").write_text(json.dumps([elsewhere]))
    assert main(["dataset", "bad.json", "-o", "bad", "--run", "agent.yaml"]) == 2
    assert "'http://169.254.169.254/mcp' is not on an allowed host" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "train.parquet").exists()
