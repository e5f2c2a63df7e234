"""Loka's agent loop for verl (registered as ``loka_mcp_agent`` through ``agent_loop_config_path``).

verl builds one agent loop per trajectory. This one holds the trajectory's MCP sessions (one per server) around
verl's own ``ToolAgentLoop``: open and list the tools (their raw JSON Schemas go to the chat template; verl's
lossy schema classes only feed its parser), run the task's setup, let ``ToolAgentLoop`` run the model's turns
(tool tokens masked, turn and length limits, truncation), then evaluate and close. Tool calls go to the sessions;
a tool's error returns to the model as text; a tool call that does not parse is counted, where verl's parsers
drop it silently. The episode's counters go into the trajectory's ``extra_fields`` (``loka_env``), where the
reward function and the per-step metrics read them.

An environment that fails raises (failure policy ``drop``: verl drops the group) or finishes the trajectory with
``env_error`` set (``zero``: the rubric scores it 0).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from verl.experimental.agent_loop.tool_agent_loop import AgentData, AgentState, ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from loka_trainer.agents.environment import AgentSettings, Episode, ToolCall, task_tools
from loka_trainer.agents.episode import EPISODE_KEY, MESSAGES_KEY
from loka_trainer.agents.mcp_client import EnvironmentFailedError, ToolSpec

log = logging.getLogger(__name__)


def parser_schema(tool: ToolSpec) -> OpenAIFunctionToolSchema:
    """verl's schema class for its parsers: only type, description and enum per property survive (the chat template
    gets the raw schema instead)."""
    properties = {}
    for name, given in (tool.input_schema.get("properties") or {}).items():
        prop = given if isinstance(given, dict) else {}
        kind = prop.get("type")
        entry: dict[str, Any] = {"type": kind if isinstance(kind, str | list) else "string"}
        if isinstance(prop.get("description"), str):
            entry["description"] = prop["description"]
        if isinstance(prop.get("enum"), list):
            entry["enum"] = prop["enum"]
        properties[name] = entry
    required = [r for r in tool.input_schema.get("required") or [] if isinstance(r, str)]
    return OpenAIFunctionToolSchema.model_validate(
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        }
    )


class ProxyTool:
    """What ToolAgentLoop needs of a tool (its name and parser schema); calls go through ``_call_tool``."""

    def __init__(self, tool: ToolSpec) -> None:
        self.name = tool.name
        self.tool_schema = parser_schema(tool)


class CountingParser(ToolParser):
    """Wraps verl's parser and counts the tool calls the model began but that did not parse."""

    def __init__(self, inner: ToolParser, loop: MCPAgentLoop) -> None:
        super().__init__(inner.tokenizer)
        self.inner, self.loop = inner, loop
        self.start_token = getattr(inner, "tool_call_start_token", None)

    @property
    def stop_token_ids(self) -> list[int]:
        return self.inner.stop_token_ids

    async def extract_tool_calls(
        self, responses_ids: list[int], tools: list[OpenAIFunctionToolSchema] | None = None
    ) -> tuple[str, list[FunctionCall]]:
        content, calls = await self.inner.extract_tool_calls(responses_ids, tools or [])
        malformed = 0
        if self.start_token:
            text = self.tokenizer.decode(responses_ids)
            malformed = max(0, text.count(self.start_token) - len(calls))
        self.loop.last_turn_malformed = malformed
        if malformed and self.loop.episode is not None:
            self.loop.episode.count_malformed(malformed)
        return content, calls


class MCPAgentLoop(ToolAgentLoop):
    """One trajectory in the run's MCP environment."""

    def __init__(self, *args: Any, tools: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, tools=None, **kwargs)  # the tools come from the environment, per trajectory
        self.settings = AgentSettings.from_env()
        self.tool_parser = CountingParser(self.tool_parser, self)
        self.episode: Episode | None = None
        self.agent_data: AgentData | None = None
        self.last_turn_malformed = 0

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any) -> Any:
        messages = list(kwargs.get("raw_prompt") or [])
        if self.settings.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.settings.system_prompt})
        kwargs["raw_prompt"] = messages
        task = task_tools(kwargs.get("extra_info"), self.settings)  # a row on a host not allowed raises here
        self.episode = episode = Episode(self.settings, task)
        try:
            try:
                tools = await episode.open()
                self.tools = {t.name: ProxyTool(t) for t in tools}
                self.tool_schemas = [t.openai_schema() for t in tools]  # raw JSON Schema, for the chat template
                await episode.setup()
            except EnvironmentFailedError as error:
                self._failed(error)
                self.tools, self.tool_schemas = {}, []
            output = await super().run(sampling_params, priority, **kwargs)
            if not episode.stats.env_error:
                try:
                    await episode.evaluate()
                except EnvironmentFailedError as error:
                    self._failed(error)
        finally:
            await episode.close()
        self._finish(output)
        return output

    def _failed(self, error: EnvironmentFailedError) -> None:
        log.warning("environment failed (%s): %s", self.settings.on_env_error, error)
        if self.settings.drops_failed_episodes:
            raise error

    def _finish(self, output: Any) -> None:
        assert self.episode is not None
        stats = self.episode.stats
        data = self.agent_data
        if data is not None:
            stats.assistant_turns = data.assistant_turns
            last = data.messages[-1] if data.messages else {}
            stats.final_answer = (
                last.get("role") == "assistant" and not data.tool_calls and not self.last_turn_malformed
            )
            output.extra_fields[MESSAGES_KEY] = json.dumps(data.messages, default=str)
        output.extra_fields[EPISODE_KEY] = stats.as_record()

    async def _handle_pending_state(self, agent_data: AgentData, sampling_params: dict[str, Any]) -> AgentState:
        self.agent_data = agent_data
        return await super()._handle_pending_state(agent_data, sampling_params)

    async def _call_tool(
        self, tool_call: FunctionCall, tools_kwargs: dict[str, Any], agent_data: AgentData
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        assert self.episode is not None
        try:
            arguments = json.loads(tool_call.arguments)
        except (json.JSONDecodeError, TypeError) as error:
            self.episode.count_malformed()
            return ToolResponse(text=f"Error: the arguments of {tool_call.name!r} are not JSON: {error}"), 0.0, {}
        if not isinstance(arguments, dict):
            self.episode.count_malformed()
            return ToolResponse(text=f"Error: the arguments of {tool_call.name!r} must be an object"), 0.0, {}
        try:
            result = await self.episode.call(ToolCall(tool_call.name, arguments))
        except EnvironmentFailedError as error:
            self._failed(error)
            return ToolResponse(text="Error: the environment failed"), 0.0, {}
        return ToolResponse(text=result.text), 0.0, {}
