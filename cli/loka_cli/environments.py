"""`loka init NAME --env URL`: connect to an MCP environment, list its tools, and write a run that trains on it.

It writes ``NAME.yaml`` (a run with ``spec.environment``, the default rubric task_completion 0.8, tool_execution 0.1,
format_compliance 0.1) and ``NAME-prompt.yaml`` (a ConfigMap with the system prompt the run refers to). The system
prompt says what the tools are for in prose; the tools' JSON Schemas reach the model at training time through its own
chat template (``tools=``), in the model's native tool-call format: nothing here writes tool-call syntax by hand.
With ``--tokenizer DIR`` it also writes ``NAME-prompt-preview.txt``: the first prompt as that chat template renders it.

Header values may reference variables (``${ENV_API_KEY}``), resolved from ``.env``/the environment only to connect;
the files keep the references, and the run maps each one to a Secret key (``--env-secret``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loka_api.environments import LIFECYCLE_DEFAULTS, host_of, substitute, variables_in
from loka_cli.errors import EXIT_CLUSTER, CliError, usage

LIST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ListedTool:
    name: str
    description: str
    input_schema: Mapping[str, Any]

    def schema(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": dict(self.input_schema)}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class EnvOptions:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # variable -> (secret, key)
    tokenizer: Path | None = None


def parse_headers(values: Sequence[str] | None) -> dict[str, str]:
    headers = {}
    for value in values or ():
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise usage(f"--env-header: {value!r} is not NAME=VALUE", "e.g. --env-header 'Authorization=Bearer ${KEY}'")
        headers[name.strip()] = text
    return headers


def parse_secrets(values: Sequence[str] | None) -> dict[str, tuple[str, str]]:
    secrets = {}
    for value in values or ():
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([a-z0-9][-a-z0-9.]*)/([-._a-zA-Z0-9]+)", value)
        if match is None:
            raise usage(f"--env-secret: {value!r} is not VAR=SECRET/KEY", "e.g. --env-secret ENV_API_KEY=env-key/token")
        secrets[match.group(1)] = (match.group(2), match.group(3))
    return secrets


def list_tools(url: str, headers: Mapping[str, str], environ: Mapping[str, str]) -> list[ListedTool]:
    """The environment's tools, over the MCP SDK's streamable HTTP client (headers resolved for this call only)."""
    try:
        resolved = {name: substitute(value, environ) for name, value in headers.items()}
    except KeyError as error:
        raise usage(f"--env-header: {error.args[0]}", "set it in .env or the environment") from None

    async def listing() -> list[ListedTool]:
        import httpx
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async with (
            httpx.AsyncClient(headers=resolved, timeout=LIST_TIMEOUT_S) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = (await session.list_tools()).tools
        return [ListedTool(t.name, t.description or "", dict(t.inputSchema or {})) for t in tools]

    try:
        return asyncio.run(asyncio.wait_for(listing(), LIST_TIMEOUT_S))
    except Exception as error:
        reason = _reason(error)
        raise CliError(f"--env {url}: could not list its tools ({reason})", code=EXIT_CLUSTER) from None


def _reason(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def system_prompt(tools: Sequence[ListedTool]) -> str:
    """What the tools are for, in prose; their schemas come through the chat template at training time."""
    lines = [
        "You act in an environment through tools. Call one tool at a time, read its result, and continue until the "
        "task is done; then answer in plain text without a tool call.",
        "",
        "Tools:",
    ]
    lines += [f"- {t.name}: {t.description or '(no description)'}" for t in tools if t.name not in LIFECYCLE_DEFAULTS]
    return "\n".join(lines) + "\n"


def prompt_preview(tokenizer_dir: Path, prompt: str, tools: Sequence[ListedTool]) -> str:
    """The first prompt as the model's own chat template renders it, tools included (needs transformers)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise usage("--tokenizer needs transformers installed (pip install transformers)") from error
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "<the task's prompt>"}]
    text = tokenizer.apply_chat_template(
        messages,
        tools=[t.schema() for t in tools if t.name not in LIFECYCLE_DEFAULTS],
        tokenize=False,
        add_generation_prompt=True,
    )
    return str(text)


def environment_yaml(name: str, options: EnvOptions, tools: Sequence[ListedTool]) -> list[str]:
    """The spec.environment and reward lines of the run."""
    lifecycle = [t.name for t in tools if t.name in LIFECYCLE_DEFAULTS]
    host, port = host_of(options.url)
    lines = [
        "  environment:             # the MCP environment the model acts in (`loka init --env`)",
        "    servers:",
        "    - name: env",
        f"      url: {json.dumps(options.url)}",
    ]
    if options.headers:
        lines.append("      headers:")
        lines += [f"        {json.dumps(k)}: {json.dumps(v)}" for k, v in options.headers.items()]
    variables = sorted({v for value in options.headers.values() for v in variables_in(value)})
    if variables:
        lines.append(
            "    secretVariables:         # ${VAR} in headers, from Secret keys (`--env-secret VAR=SECRET/KEY`)"
        )
        for variable in variables:
            secret, key = options.secrets.get(variable, (f"{name}-env", variable.lower().replace("_", "-")))
            lines.append(f"    - {{name: {variable}, secretRef: {{secret: {secret}, key: {key}}}}}")
    allowed = f"{host}:{port}" if port else host
    lines += [
        f"    allowedHosts: [{json.dumps(allowed)}]   # hosts task rows' mcp_config may name",
        f"    lifecycleTools: {{setup: {json.dumps('setup' if 'setup' in lifecycle else None)}, "
        f"evaluate: {json.dumps('evaluate' if 'evaluate' in lifecycle else None)}}}   # hidden from the model",
        f"    # allowedTools: {json.dumps([t.name for t in tools if t.name not in LIFECYCLE_DEFAULTS])}",
        "    maxTurns: 16",
        "    maxToolResponseChars: 4096",
        "    toolCallFormat: hermes   # the model's tool-call parser in verl (Qwen2.5/3: hermes)",
        f"    systemPrompt: {{configMap: {{name: {name}-prompt, key: system.txt}}}}   # {name}-prompt.yaml",
        "    onEnvError: drop          # drop the group, or zero: score it 0 and count it",
        "  reward:                   # the default rubric; add {name, kind: function, function: module:fn, weight}",
        "    components:",
        "    - {name: task_completion, kind: environment, weight: 0.8}",
        "    - {name: tool_execution, kind: toolExecution, weight: 0.1}",
        "    - {name: format_compliance, kind: formatCompliance, weight: 0.1}",
    ]
    return lines


def configmap_yaml(name: str, namespace: str, prompt: str) -> str:
    import yaml

    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-prompt", "namespace": namespace},
        "data": {"system.txt": prompt},
    }
    return yaml.safe_dump(body, sort_keys=False, width=120)
