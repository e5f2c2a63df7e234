"""The trl engine's agent loop: TRL's GRPOTrainer ``rollout_func`` running each episode in the run's MCP environment
with the same client, episode and reward composition as verl's loop, so an agent run trains on CPU too.

Per prompt: open the sessions, list the tools (their raw schemas go to the chat template), set up, then turns of the
model (Hugging Face ``generate``) and tool calls parsed in Hermes format, the environment's replies masked out of the
loss (``env_mask``), until an answer, the turn limit or the token budget; evaluate, close. The episode's record is
handed to the reward with the completion (the ``loka_env`` column).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loka_api.environments import FailurePolicy
from loka_trainer.agents.environment import AgentSettings, Episode, ToolCall, task_tools
from loka_trainer.agents.episode import EPISODE_KEY
from loka_trainer.agents.mcp_client import EnvironmentFailedError

log = logging.getLogger(__name__)

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOL_CALL_START = "<tool_call>"


@dataclass
class Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add(self, ids: Sequence[int], *, model: bool, logprobs: Sequence[float] | None = None) -> None:
        self.completion_ids += list(ids)
        self.env_mask += [1 if model else 0] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


def parse_hermes(text: str) -> tuple[list[ToolCall], int]:
    """Tool calls in Hermes format, and how many began but did not parse."""
    calls: list[ToolCall] = []
    for match in _TOOL_CALL.findall(text):
        try:
            body = json.loads(match)
            name, arguments = body["name"], body.get("arguments") or {}
            if isinstance(name, str) and isinstance(arguments, dict):
                calls.append(ToolCall(name, arguments))
        except (ValueError, KeyError, TypeError):
            continue
    return calls, max(0, text.count(TOOL_CALL_START) - len(calls))


# (prompt ids, budget) -> (new token ids, their log-probabilities)
Generate = Callable[[list[int], int], tuple[list[int], list[float]]]


class EpisodeRunner:
    """Runs one episode for a prompt with a ``generate`` function; reusable by tests with a scripted model."""

    def __init__(self, settings: AgentSettings, tokenizer: Any, *, max_completion_tokens: int) -> None:
        self.settings, self.tokenizer, self.budget = settings, tokenizer, max_completion_tokens

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, generation: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation
        )
        return str(text)

    def _tool_turn(self, messages: list[dict[str, Any]], replies: list[dict[str, Any]], tools: list[Any]) -> list[int]:
        """The tokens the chat template puts after the model's turn: the tool replies and the next turn's start."""
        before = self._render(messages, tools, generation=False)
        after = self._render([*messages, *replies], tools, generation=True)
        eos = self.tokenizer.eos_token or ""
        cut = before.rfind(eos) + len(eos) if eos and eos in before else len(before)
        return list(self.tokenizer.encode(after[cut:], add_special_tokens=False))

    async def _turns(
        self,
        episode: Episode,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        trajectory: Trajectory,
        generate: Generate,
    ) -> None:
        """The model's turns and its tool calls, until an answer, the turn limit or the token budget."""
        for _ in range(self.settings.max_turns):
            room = self.budget - len(trajectory.completion_ids)
            if room <= 0:
                break
            ids, logprobs = generate(trajectory.prompt_ids + trajectory.completion_ids, room)
            trajectory.add(ids, model=True, logprobs=logprobs)
            episode.stats.assistant_turns += 1
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            calls, malformed = parse_hermes(text)
            if malformed:
                episode.count_malformed(malformed)
            if not calls:
                ended = bool(ids) and ids[-1] == self.tokenizer.eos_token_id  # not cut by the token budget
                episode.stats.final_answer = ended and not malformed and bool(text.strip())
                break
            content = _TOOL_CALL.sub("", text).strip()
            called = calls[: self.settings.max_parallel_calls]
            tool_calls = [{"type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
                          for c in called]  # fmt: skip
            assistant = {"role": "assistant", "content": content, "tool_calls": tool_calls}
            replies = []
            for call in called:
                try:
                    result = await episode.call(call)
                    replies.append({"role": "tool", "content": result.text})
                except EnvironmentFailedError:
                    if self.settings.drops_failed_episodes:
                        raise
                    replies.append({"role": "tool", "content": "Error: the environment failed"})
            reply_ids = self._tool_turn([*messages, assistant], replies, tools)
            messages += [assistant, *replies]
            trajectory.add(reply_ids[: max(0, self.budget - len(trajectory.completion_ids))], model=False)

    async def run(
        self, prompt: list[dict[str, Any]], extra_info: Mapping[str, Any] | None, generate: Generate
    ) -> tuple[Trajectory, Episode]:
        messages = list(prompt)
        if self.settings.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.settings.system_prompt})
        episode = Episode(self.settings, task_tools(extra_info, self.settings))
        tools: list[dict[str, Any]] = []
        try:
            try:
                await episode.open()
                tools = [t.openai_schema() for t in episode.tools]
                await episode.setup()
            except EnvironmentFailedError:
                if self.settings.drops_failed_episodes:
                    raise
            prompt_text = self._render(messages, tools, generation=True)
            trajectory = Trajectory(list(self.tokenizer.encode(prompt_text, add_special_tokens=False)))
            await self._turns(episode, messages, tools, trajectory, generate)
            if not episode.stats.env_error:
                try:
                    await episode.evaluate()
                except EnvironmentFailedError:
                    if self.settings.drops_failed_episodes:
                        raise
        finally:
            await episode.close()
        return trajectory, episode


def hf_generate(model: Any, tokenizer: Any, *, temperature: float = 1.0) -> Generate:
    """One assistant turn with Hugging Face ``generate`` (sampling), up to the end-of-turn token."""

    def generate(prompt_ids: list[int], budget: int) -> tuple[list[int], list[float]]:
        import torch

        inputs = torch.tensor([prompt_ids], device=model.device)
        with torch.no_grad():
            out = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=budget, do_sample=True,
                temperature=temperature, top_k=0, top_p=1.0, output_scores=True, return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        new = out.sequences[0, len(prompt_ids) :].tolist()
        logprobs = [
            float(torch.log_softmax(score[0].float(), dim=-1)[token])
            for score, token in zip(out.scores, new, strict=False)
        ]
        if tokenizer.pad_token_id in new and tokenizer.pad_token_id != tokenizer.eos_token_id:
            end = new.index(tokenizer.pad_token_id)
            new, logprobs = new[:end], logprobs[:end]
        return new, logprobs

    return generate


def mcp_rollout_func(
    settings: AgentSettings, tasks: Mapping[str, Mapping[str, Any]], *, max_completion_tokens: int
) -> Callable[[list[Any], Any], dict[str, Any]]:
    """TRL's ``rollout_func``: one episode per prompt it is given. ``tasks`` maps a prompt (as JSON) to its row's
    extra_info (setup/evaluate calls, servers), since TRL hands the function prompts only.
    """

    # TRL cannot drop a group from a step: a failed environment scores zero (and is counted) whatever the policy.
    zeroing = replace(settings, on_env_error=FailurePolicy.ZERO.value)

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        tokenizer = trainer.processing_class
        model = trainer.model
        runner = EpisodeRunner(zeroing, tokenizer, max_completion_tokens=max_completion_tokens)
        generate = hf_generate(model, tokenizer, temperature=float(getattr(trainer.args, "temperature", 1.0) or 1.0))
        was_training = model.training
        model.eval()

        async def all_episodes() -> list[tuple[Trajectory, Episode]]:
            return [
                await runner.run(list(p), tasks.get(json.dumps(list(p), sort_keys=True)), generate) for p in prompts
            ]

        try:
            done = asyncio.run(all_episodes())
        finally:
            model.train(was_training)
        return {
            "prompt_ids": [t.prompt_ids for t, _ in done],
            "completion_ids": [t.completion_ids for t, _ in done],
            "logprobs": [t.logprobs for t, _ in done],
            "env_mask": [t.env_mask for t, _ in done],
            EPISODE_KEY: [e.stats.as_record() for _, e in done],
        }

    return rollout


def prompt_key(prompt: Any) -> str:
    return json.dumps(list(prompt), sort_keys=True)
