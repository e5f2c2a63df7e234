"""`make demo-agent`'s parts: a toy MCP environment, tool-use transcripts for SFT, tasks for GRPO, and a measure of a
model's episodes in the environment.

The environment is `localcluster.mcp_env` (the MCP SDK's FastMCP over streamable HTTP) in its own process: the task
"Reach N" is won by calling ``add(n=N)`` once, then answering. The SFT stage learns that from transcripts whose first
prompt is exactly what the agent loop renders (the tools' schemas in the system turn, by the model's own chat
template), so the GRPO stage, started from the SFT run's final checkpoint (``model.fromRun``), sees prompts it was
taught on. `measure` runs the same episodes as the trl engine's agent loop (its EpisodeRunner, the default rubric)
on a model folder: tool calls per episode, tool success rate and reward, for the base, SFT and GRPO weights.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Not from localcluster.controlplane: the GPU script (tests/gpu/agent_env.py) uses this module without the control
# plane's dependencies.
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCALHOST = "127.0.0.1"
AGENT_PIPELINE = REPO_ROOT / "examples" / "agents" / "tool-use-demo.yaml"
# The tool the model may call (the others the toy environment offers are for the tests).
TOOL = "add"
VALIDATION_FRACTION = 0.125
SPLIT_SEED = "loka"
# What build_agent_assets makes; a folder built to another recipe is rebuilt.
AGENT_RECIPE = (
    "tiny-qwen2, vocab 1024 with the episodes' text; reach-N tasks 1..20 (64, split 1/8); two SFT turns per task "
    "(call add, then answer); add's schema"
)
# The base model's vocabulary: the arithmetic demo's tokens and the episodes' (calls, replies, the tools' schemas).
AGENT_VOCAB = 1024


@dataclass
class ToyEnvironment:
    """The toy MCP environment in its own process."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def stats(self) -> dict[str, Any]:
        """Its counters: calls per tool, sessions opened and closed."""
        with urllib.request.urlopen(f"{self.base}/stats", timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_toy_environment(port: int, log: Path, *, timeout: float = 60) -> ToyEnvironment:
    """Serve `localcluster.mcp_env` on ``port`` and wait until it answers."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "localcluster.mcp_env", "--host", LOCALHOST, "--port", str(port)],
            stdout=sink, stderr=sink, cwd=REPO_ROOT,
        )  # fmt: skip
    environment = ToyEnvironment(process, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"the toy MCP environment exited ({process.returncode}); see {log}"
            raise RuntimeError(msg)
        try:
            environment.stats()
            return environment
        except OSError:
            time.sleep(0.2)
    environment.stop()
    msg = f"the toy MCP environment did not answer on port {port} within {timeout:.0f}s; see {log}"
    raise RuntimeError(msg)


def reach_tasks(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """HUD-style tasks (what `loka dataset` reads): reach a target with ``add``; setup and evaluate per task."""
    rng = random.Random(seed)
    tasks = []
    for index in range(count):
        target = rng.randint(1, 20)
        tasks.append(
            {
                "id": f"reach-{index}",
                "prompt": f"Reach {target}",
                "setup_tool": {"name": "setup", "arguments": {"target": target}},
                "evaluate_tool": {"name": "evaluate", "arguments": {"target": target}},
                "metadata": {"target": target},
            }
        )
    return tasks


def visible_tools(url: str) -> list[dict[str, Any]]:
    """The tools the agent loop gives the model, as it gives them (their raw schemas, lifecycle tools hidden)."""
    from loka_trainer.agents.environment import Episode

    async def listed() -> list[dict[str, Any]]:
        async with Episode(agent_settings(url)) as episode:
            return [tool.openai_schema() for tool in episode.tools]

    return asyncio.run(listed())


def agent_settings(url: str) -> Any:
    """The agent loop's settings for the toy environment, as the GRPO run's spec.environment gives them."""
    from loka_api.environments import FailurePolicy
    from loka_trainer.agents.environment import AgentSettings
    from loka_trainer.agents.mcp_client import ServerConfig

    return AgentSettings(
        servers=(ServerConfig("env", url, {}, timeout_seconds=10),),
        allowed_hosts=(LOCALHOST,),
        allowed_tools=(TOOL,),
        max_turns=2,
        on_env_error=FailurePolicy.ZERO.value,
    )


def tools_system_turn(tokenizer: Any, tools: list[dict[str, Any]]) -> str:
    """The system turn the chat template renders for ``tools``, as plain text: an SFT prompt that starts with it
    renders exactly as the agent loop's first prompt does."""
    text = str(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=tools, tokenize=False))
    start, end = "<|im_start|>system\n", "<|im_end|>"
    if not text.startswith(start):
        msg = "the chat template puts no system turn before the tools"
        raise ValueError(msg)
    return text[len(start) : text.index(end)]


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A Hermes tool call, as the chat template writes one and the agent loop parses it."""
    return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}</tool_call>'


def transcripts(task: dict[str, Any], system: str) -> list[list[dict[str, str]]]:
    """Two SFT conversations per task: the prompt, then the call of ``add``; and after its result, the answer."""
    target = task["metadata"]["target"]
    opening = [{"role": "system", "content": system}, {"role": "user", "content": task["prompt"]}]
    call = {"role": "assistant", "content": tool_call_text(TOOL, {"n": target})}
    return [
        [*opening, call],
        [*opening, call, {"role": "tool", "content": f"counter={target}"}, {"role": "assistant", "content": "done"}],
    ]


def agent_text(tasks: Sequence[dict[str, Any]], system: str) -> list[str]:
    """What the episodes say, as the base model's tokenizer learns it: its tool calls, replies and the tools' system
    turn become few tokens each, so the tiny model learns them in a short SFT run."""
    lines = []
    for task in tasks:
        for conversation in transcripts(task, system):
            lines += [message["content"] for message in conversation]
    return lines


def build_agent_assets(assets: Path, url: str) -> Path:
    """Under ``assets``: the base model (tiny, its tokenizer trained on the episodes' text too), ``tasks/`` (RL rows
    for GRPO) and ``sft/`` (tool-use conversations), each as train.parquet and validation.parquet, split by task
    id."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from loka_api.dataset import build_dataset, in_validation
    from loka_trainer.tiny import build_tiny_model, build_tokenizer

    stamp = assets / "recipe.txt"
    if stamp.is_file() and stamp.read_text() == AGENT_RECIPE:
        return assets
    shutil.rmtree(assets, ignore_errors=True)
    tasks = reach_tasks(64)
    task_file = assets / "tasks.jsonl"
    task_file.parent.mkdir(parents=True, exist_ok=True)
    task_file.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    build_dataset(task_file, assets / "tasks", validation_fraction=VALIDATION_FRACTION, seed=SPLIT_SEED,
                  data_source="mcp/toy", ability="tools")  # fmt: skip
    system = tools_system_turn(build_tokenizer(), visible_tools(url))
    build_tiny_model(assets / "model", vocab_size=AGENT_VOCAB, extra_text=agent_text(tasks, system))
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for task in tasks:
        split = "validation" if in_validation(task["id"], VALIDATION_FRACTION, SPLIT_SEED) else "train"
        rows[split] += [{"messages": messages} for messages in transcripts(task, system)]
    (assets / "sft").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        pq.write_table(pa.Table.from_pylist(items), assets / "sft" / f"{split}.parquet")
    stamp.write_text(AGENT_RECIPE)
    return assets


def held_out_tasks() -> list[dict[str, Any]]:
    """The tasks no stage trained on (the validation split)."""
    from loka_api.dataset import in_validation

    return [t for t in reach_tasks(64) if in_validation(t["id"], VALIDATION_FRACTION, SPLIT_SEED)]


def agent_manifests(url: str, *, storage_endpoint: str) -> list[dict[str, Any]]:
    """The two runs of `examples/agents/tool-use-demo.yaml`, pointed at this environment and this MinIO."""
    manifests = [doc for doc in yaml.safe_load_all(AGENT_PIPELINE.read_text()) if isinstance(doc, dict)]
    for manifest in manifests:
        manifest["spec"]["storage"]["endpoint"] = storage_endpoint
        for server in (manifest["spec"].get("environment") or {}).get("servers", []):
            server["url"] = url
    return manifests


@dataclass(frozen=True)
class AgentFigures:
    """What a model did in the environment over some episodes."""

    episodes: int
    tool_calls: float  # per episode
    tool_success_rate: float  # among the calls that parsed
    reward: float  # the default rubric's total (0.8 task completion, 0.1 tool execution, 0.1 format)
    task_completion: float


def measure(model: Path, url: str, tasks: Sequence[dict[str, Any]], *, samples: int = 2, seed: int = 0) -> AgentFigures:
    """Run ``samples`` episodes per task with the model in ``model`` (sampling, as GRPO's rollouts do)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loka_trainer.agents.episode import EPISODE_KEY, environment_metrics
    from loka_trainer.agents.trl_loop import EpisodeRunner, hf_generate
    from loka_trainer.rewards import compose

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    weights = AutoModelForCausalLM.from_pretrained(model)
    weights.eval()  # type: ignore[no-untyped-call]
    runner = EpisodeRunner(agent_settings(url), tokenizer, max_completion_tokens=96)
    generate = hf_generate(weights, tokenizer)

    async def episodes() -> tuple[list[Any], list[float]]:
        stats, rewards = [], []
        for task in tasks:
            info = {key: json.dumps(task[key]) for key in ("setup_tool", "evaluate_tool")}
            for _ in range(samples):
                _, episode = await runner.run([{"role": "user", "content": task["prompt"]}], info, generate)
                scored = await compose.compute_score("mcp/toy", "", None, {EPISODE_KEY: episode.stats.as_record()})
                stats.append(episode.stats)
                rewards.append(float(scored["score"]))
        return stats, rewards

    stats, rewards = asyncio.run(episodes())
    figures = environment_metrics(stats)
    return AgentFigures(
        episodes=len(stats),
        tool_calls=figures["env/tool_calls/mean"],
        tool_success_rate=figures["env/tool_success_rate"],
        reward=sum(rewards) / len(rewards),
        task_completion=sum(s.task_completion for s in stats) / len(stats),
    )


# The per-step figures the GRPO run logs (the trl engine's reward adapter, into the run's metrics file).
STEP_FIGURES = (
    ("env/tool_calls/mean", "tool calls/episode", 2.0),
    ("env/tool_success_rate", "tool success rate", 1.0),
    ("reward/total/mean", "reward", 1.0),
)


def summarize_agent(client: Any, stack: Any, manifests: list[dict[str, Any]], environment: ToyEnvironment) -> None:
    """The agent's figures: the GRPO run's per-step environment metrics, what the environment counted, and the
    base, SFT and GRPO weights measured on the held-out tasks with the same episodes."""
    import tempfile

    from localcluster.demo import sparkline, step_metric

    sft, grpo = manifests
    namespace, grpo_name = grpo["metadata"]["namespace"], grpo["metadata"]["name"]
    print(f"  {grpo_name} per step (GRPO in the environment)")
    for key, label, high in STEP_FIGURES:
        values = step_metric(stack, namespace, grpo_name, key)
        if values:
            print(f"    {label:<20} {values[0]:.2f} → {values[-1]:.2f}  {sparkline(values, high=high)}")
    counted = environment.stats()
    calls = counted["calls"]
    print(f"  the environment counted  {calls.get('evaluate', 0)} evaluate calls, {calls.get('add', 0)} add calls, "
          f"{counted['sessions_opened']} sessions opened, {counted['sessions_closed']} closed")  # fmt: skip
    tasks = held_out_tasks()
    print(f"  held-out tasks ({len(tasks)} episodes, sampled as in GRPO), measured for each set of weights:")
    print(f"    {'weights':<12} {'tool calls/episode':>18} {'tool success':>13} {'task done':>10} {'reward':>7}")
    with tempfile.TemporaryDirectory(prefix="loka-agent-demo-") as scratch:
        models = [("base", stack.layout.root / "agent-assets" / "model")]
        for manifest, label in ((sft, "after SFT"), (grpo, "after GRPO")):
            name = manifest["metadata"]["name"]
            last = max(c.step for c in client.checkpoints(name))
            models.append((label, client.download(name, last, Path(scratch) / name).path))
        for label, folder in models:
            figures = measure(folder, environment.url, tasks, samples=1)
            print(f"    {label:<12} {figures.tool_calls:>18.2f} {figures.tool_success_rate:>13.2f} "
                  f"{figures.task_completion:>10.2f} {figures.reward:>7.2f}")  # fmt: skip
