"""`make demo-agent`'s SFT stage teaches what its GRPO stage asks: the transcripts' prompts render exactly as the agent
loop's first prompt does, and the calls they teach are the calls the agent loop parses."""

from __future__ import annotations

from localcluster.agent_demo import reach_tasks, tool_call_text, tools_system_turn, transcripts
from loka_trainer.agents.environment import ToolCall
from loka_trainer.agents.trl_loop import parse_hermes
from loka_trainer.tiny import build_tokenizer

ADD = {"type": "function", "function": {"name": "add", "description": "Add n to the counter.",
                                        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}},
                                                       "required": ["n"]}}}  # fmt: skip


def test_an_sft_prompt_renders_as_the_agent_loops_first_prompt_and_its_call_parses() -> None:
    tokenizer = build_tokenizer()
    task = reach_tasks(1)[0]
    first, second = transcripts(task, tools_system_turn(tokenizer, [ADD]))
    taught = tokenizer.apply_chat_template(first[:-1], tokenize=False, add_generation_prompt=True)
    asked = tokenizer.apply_chat_template(
        [{"role": "user", "content": task["prompt"]}], tools=[ADD], tokenize=False, add_generation_prompt=True
    )
    assert taught == asked
    target = task["metadata"]["target"]
    assert parse_hermes(first[-1]["content"]) == ([ToolCall("add", {"n": target})], 0)
    assert first[-1]["content"] == tool_call_text("add", {"n": target})
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "assistant"]
    assert second[3]["content"] == f"counter={target}", "what the toy environment's add replies"
