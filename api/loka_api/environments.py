"""``spec.environment``: the MCP environments an RL run's agent acts in through tools, and how the agent loop runs.

Both sides read it: the operator runs image-based servers and routes the Secrets the headers use, the trainer's
agent loop connects, and `loka dataset` checks task rows against ``allowedHosts``. Secrets never enter the spec:
a header value may hold ``${VAR}`` references to ``secretVariables``, which reach the pods as environment
variables (``secretKeyRef``) and are substituted only when a session connects.

Also here, because the dataset converter, the agent loop and the operator's checks must agree on them: which
hosts a URL may point at, and the ``${VAR}`` grammar.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import ConfigDict, Field

from loka_api.contract import ENV_SECRET_VARIABLES, SECRET_ENV
from loka_api.models import (
    DNS_LABEL_PATTERN,
    ConfigMapKeyRef,
    LokaModel,
    PodResources,
    SecretKeyRef,
    cel,
    validations,
)

# The agent loop verl instantiates for every trajectory of a run with an environment.
AGENT_LOOP_NAME = "loka_mcp_agent"
# Set by the trainer for verl's agent-loop workers (Ray runtime_env): the run's environment as JSON, with the
# servers' URLs resolved and no secret in it.
ENV_ENVIRONMENT = "LOKA_ENVIRONMENT"
# Set by the operator on the trainer's pods from the system prompt's ConfigMap key (configMapKeyRef).
ENV_SYSTEM_PROMPT = "LOKA_SYSTEM_PROMPT"
# ${VAR}, ${VAR:default} (HUD's syntax) and $VAR.
VARIABLE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
# Headers whose values are credentials: a literal value there is refused (use ${VAR} and a secretVariable).
CREDENTIAL_HEADER = re.compile(r"(^authorization$|token|secret|api[-_]?key|password|^cookie$)", re.IGNORECASE)
# The lifecycle tools' default names (HUD's): called by the agent loop, hidden from the model.
LIFECYCLE_DEFAULTS = ("setup", "evaluate")
DEFAULT_MCP_PORT = 8000
DEFAULT_MCP_PATH = "/mcp"
# A Service name is a DNS-1035 label.
MAX_SERVICE_NAME = 63


class FailurePolicy(enum.StrEnum):
    """What an episode whose environment failed (connect, setup, evaluate) becomes."""

    DROP = "drop"  # the trajectory raises: verl drops its group from the step
    ZERO = "zero"  # it scores 0 and is counted in env/error_rate


class ToolCallFormat(enum.StrEnum):
    """Tool-call formats verl 0.9.1's parsers understand (verl/experimental/agent_loop/tool_parser.py)."""

    HERMES = "hermes"
    GPT_OSS = "gpt-oss"
    QWEN3_CODER = "qwen3_coder"
    GLM = "glm"
    SEED = "seed"
    MINIMAX = "minimax"
    KIMI = "kimi"
    DEEPSEEK_V4 = "deepseek_v4"
    GEMMA4 = "gemma4"


class SecretVariable(LokaModel):
    """A variable the servers' headers (and task rows' ``mcp_config``) may reference as ``${NAME}``."""

    name: str = Field(
        min_length=1, max_length=128, pattern=VARIABLE_NAME_PATTERN, description="Variable name, e.g. ENV_API_KEY."
    )
    secret_ref: SecretKeyRef = Field(description="The Secret key holding its value (never copied).")


class ServerImage(LokaModel):
    """An MCP server the run brings: a Deployment and Service owned by the run, reachable only from its pods."""

    image: str = Field(min_length=1, max_length=512, description="Container image serving MCP over streamable HTTP.")
    port: int = Field(default=DEFAULT_MCP_PORT, ge=1, le=65535, description="The port it listens on.")
    replicas: int = Field(default=1, ge=1, le=64, description="Pods behind the Service (counted by Kueue).")
    resources: PodResources = Field(
        default=PodResources(cpu="1", memory="2Gi"), description="Requests and limits of each server pod."
    )
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=32, description="Arguments to the image's entrypoint."
    )


class EnvironmentServer(LokaModel):
    """One MCP server: every trajectory opens one session on it."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.url) != has(self.run)", "set exactly one of url (hosted elsewhere) and run (an image)")
        )
    )

    name: str = Field(
        min_length=1, max_length=20, pattern=DNS_LABEL_PATTERN, description="Its name (task rows' mcp_config keys)."
    )
    url: str | None = Field(
        default=None,
        max_length=1024,
        description="http(s)://host[:port]/path of a server hosted elsewhere (its host is allowed).",
        json_schema_extra=validations(
            cel("self.matches('^https?://[^/\\\\s]+(/.*)?$')", "must be an http:// or https:// URL")
        ),
    )
    run: ServerImage | None = Field(default=None, description="Run this image for the run instead of a URL.")
    path: str = Field(
        default=DEFAULT_MCP_PATH, max_length=256, pattern=r"^/.*$", description="run: the MCP endpoint's path."
    )
    headers: dict[str, Annotated[str, Field(max_length=2048)]] = Field(
        default_factory=dict,
        max_length=32,
        description="HTTP headers of every request; values may reference secretVariables as ${NAME}.",
    )
    timeout_seconds: float = Field(default=60, gt=0, le=3600, description="Per tool call (a timeout is a tool error).")
    connect_timeout_seconds: float = Field(default=30, gt=0, le=600, description="To open a session and list tools.")
    max_sessions: int = Field(
        default=64, ge=1, le=4096, description="Sessions open at once per agent-loop worker process."
    )


class LifecycleTools(LokaModel):
    """Tools the agent loop calls itself, hidden from the model; a task's own setup_tool / evaluate_tool wins."""

    setup: str | None = Field(default="setup", max_length=128, description="Called before the first turn.")
    evaluate: str | None = Field(default="evaluate", max_length=128, description="Its reward is task_completion.")


class SystemPrompt(LokaModel):
    config_map: ConfigMapKeyRef = Field(description="The ConfigMap key holding the system prompt (`loka init`).")


class EnvironmentSpec(LokaModel):
    """MCP servers the agent acts in, and the agent loop's limits (verl's multi_turn keys)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.servers.all(s, self.servers.exists_one(t, t.name == s.name))",
                "environment.servers: each name must be unique",
                field_path=".servers",
            )
        )
    )

    servers: list[EnvironmentServer] = Field(min_length=1, max_length=8, description="One session each per episode.")
    secret_variables: list[SecretVariable] = Field(
        default_factory=list, max_length=16, description="Secret values headers reference as ${NAME}."
    )
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9*.:\[\]-]+$")]] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Hosts a task row's mcp_config may point at (glob, e.g. *.envs.svc; host:port to pin a port). "
            "The servers' own hosts are always allowed; any other URL in a row is refused."
        ),
    )
    lifecycle_tools: LifecycleTools = Field(default=LifecycleTools())
    allowed_tools: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=128, description="Tools the model may call (empty: all but the lifecycle's)."
    )
    max_turns: int = Field(default=16, ge=1, le=1024, description="Assistant turns per episode.")
    max_parallel_calls: int = Field(default=1, ge=1, le=64, description="Tool calls run per assistant turn.")
    max_tool_response_chars: int = Field(
        default=4096, ge=16, le=1_000_000, description="Characters of a tool result the model sees (the middle is cut)."
    )
    tool_call_format: ToolCallFormat = Field(default=ToolCallFormat.HERMES, description="verl's tool-call parser.")
    system_prompt: SystemPrompt | None = Field(default=None, description="Prepended to prompts that have none.")
    on_env_error: FailurePolicy = Field(
        default=FailurePolicy.DROP, description="drop (the group leaves the step) or zero (scored 0, counted)."
    )


# --------------------------------------------------------------------------------------------- helpers


def service_name(run: str, server: str) -> str:
    """The Service (and Deployment) of an image-based server: ``<run>-env-<server>``, its run's name cut and a digest
    added where that passes the 63 characters a Service name may have (a run name has 47, a server's 20)."""
    name = f"{run}-env-{server}"
    if len(name) <= MAX_SERVICE_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    suffix = f"-{digest}-env-{server}"
    return f"{run[: MAX_SERVICE_NAME - len(suffix)].rstrip('-')}{suffix}"


def server_url(server: EnvironmentServer, *, run: str, namespace: str) -> str:
    """Where the agent loop reaches a server: its URL, or its Service's cluster address."""
    if server.url is not None:
        return server.url
    assert server.run is not None
    return f"http://{service_name(run, server.name)}.{namespace}.svc:{server.run.port}{server.path}"


def variables_in(text: str) -> list[str]:
    """The variable names ``text`` references (``${VAR}``, ``${VAR:default}``, ``$VAR``)."""
    return [m.group("braced") or m.group("bare") for m in VARIABLE.finditer(text)]


def substitute(text: str, environ: Mapping[str, str], *, allowed: Iterable[str] | None = None) -> str:
    """``text`` with its variables replaced from ``environ`` (at connect time only, never stored). A variable that
    is not in ``allowed`` (when given) or unset without a default raises KeyError naming it, never its value.
    """
    permitted = None if allowed is None else set(allowed)

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if permitted is not None and name not in permitted:
            msg = f"${{{name}}} is not one of environment.secretVariables ({', '.join(sorted(permitted)) or 'none'})"
            raise KeyError(msg)
        if name in environ:
            return environ[name]
        if match.group("default") is not None:
            return match.group("default")
        msg = f"${{{name}}} is not set in this pod's environment"
        raise KeyError(msg)

    return VARIABLE.sub(value, text)


def host_of(url: str) -> tuple[str, int | None]:
    """(hostname, explicit port) of an http(s) URL; ValueError for anything else."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        msg = f"{url!r} is not an http:// or https:// URL"
        raise ValueError(msg)
    return parsed.hostname.lower(), parsed.port


def host_allowed(url: str, patterns: Iterable[str]) -> bool:
    """Whether ``url``'s host matches one of ``patterns`` (globs on the host; ``host:port`` pins the port too)."""
    try:
        host, port = host_of(url)
    except ValueError:
        return False
    for given in patterns:
        pattern = given.lower()
        pattern_host, _, pattern_port = pattern.rpartition(":") if re.search(r":\d+$", pattern) else (pattern, "", "")
        if fnmatch.fnmatchcase(host, pattern_host) and (not pattern_port or str(port) == pattern_port):
            return True
    return False


def allowed_host_patterns(environment: EnvironmentSpec, *, run: str = "*", namespace: str = "*") -> list[str]:
    """The spec's allowedHosts plus each server's own host (with its port)."""
    patterns = list(environment.allowed_hosts)
    for server in environment.servers:
        host, port = host_of(server_url(server, run=run, namespace=namespace))
        patterns.append(f"{host}:{port}" if port else host)
    return patterns


def header_problems(headers: Mapping[str, str], declared: Iterable[str], *, where: str) -> list[str]:
    """What is wrong with a server's headers: literal credentials, variables that are not declared."""
    names = set(declared)
    problems = []
    for header, value in headers.items():
        if not re.fullmatch(HEADER_NAME_PATTERN, header) or len(header) > 128:
            problems.append(f"{where}.headers: {header!r} is not an HTTP header name (letters, digits, -, at most 128)")
            continue
        referenced = variables_in(value)
        if CREDENTIAL_HEADER.search(header) and not referenced:
            problems.append(
                f"{where}.headers.{header}: a literal credential; reference a secret variable as ${{NAME}} instead"
            )
        problems += [
            f"{where}.headers.{header}: ${{{name}}} is not one of environment.secretVariables "
            f"({', '.join(sorted(names)) or 'none declared'})"
            for name in referenced
            if name not in names
        ]
    return problems


def environment_problems(environment: EnvironmentSpec) -> list[str]:
    """Semantic checks the CRD's schema cannot make (the operator refuses the run with these)."""
    declared = [v.name for v in environment.secret_variables]
    problems: list[str] = []
    for index, server in enumerate(environment.servers):
        problems += header_problems(server.headers, declared, where=f"spec.environment.servers[{index}]")
    lifecycle = {environment.lifecycle_tools.setup, environment.lifecycle_tools.evaluate} - {None}
    problems += [
        f"spec.environment.allowedTools: {tool!r} is a lifecycle tool (hidden from the model)"
        for tool in environment.allowed_tools
        if tool in lifecycle
    ]
    reserved = sorted(set(declared) & {*SECRET_ENV, ENV_ENVIRONMENT, ENV_SYSTEM_PROMPT, ENV_SECRET_VARIABLES})
    problems += [f"spec.environment.secretVariables: {name!r} is a name Loka sets itself" for name in reserved]
    duplicates = sorted({n for n in declared if declared.count(n) > 1})
    problems += [f"spec.environment.secretVariables: {name!r} declared twice" for name in duplicates]
    return problems
