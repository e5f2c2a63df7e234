"""End to end: `make demo-agent`'s two runs through the operator, Kueue, KubeRay, a real Ray and the trainer (trl on
CPU), against the toy MCP environment (the MCP SDK's FastMCP over streamable HTTP, in its own process).

The SFT run learns tool use from transcripts; the GRPO run starts from its final checkpoint and trains in the
environment. The environment itself counts what the runs did: one session and one evaluate call per episode, so
exactly batch x samples x steps; the run's metrics file carries the environment's figures per step.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.agent_demo import ToyEnvironment, agent_manifests, start_toy_environment
from localcluster.controlplane import LocalCluster
from localcluster.demo import upload_agent_assets
from localcluster.operator_process import free_port
from localcluster.stack import DemoStack
from tests.e2e.test_training_runs import apply

SFT_STEPS = 60
GRPO_STEPS, BATCH, SAMPLES = 2, 2, 2


@pytest.fixture
def toy_environment(tmp_path: Path) -> Iterator[ToyEnvironment]:
    environment = start_toy_environment(free_port(), tmp_path / "mcp-env.log")
    yield environment
    environment.stop()


def e2e_agent_pipeline(namespace: str, environment: ToyEnvironment, cluster: LocalCluster) -> list[dict[str, Any]]:
    """The demo's runs, pointed at the e2e assets, sized for one e2e queue (4 CPUs); GRPO without validation, so
    that every evaluate call the environment counts is a training episode's."""
    sft, grpo = (copy.deepcopy(m) for m in agent_manifests(environment.url, storage_endpoint=cluster.s3_endpoint))
    for manifest in (sft, grpo):
        manifest["metadata"]["namespace"] = namespace
        spec = manifest["spec"]
        spec["resources"] = {"workers": 1, "gpusPerWorker": 0, "head": {"cpu": "1", "memory": "2Gi"},
                             "worker": {"cpu": "2", "memory": "2Gi"}}  # fmt: skip
        spec["queue"] = {"name": "e2e", "clusterQueue": namespace}
        spec["data"] = {k: v.replace("s3://loka/demo/", "s3://loka/e2e/") if isinstance(v, str) else v
                        for k, v in spec["data"].items() if k != "validation"}  # fmt: skip
    sft["spec"]["model"]["uri"] = "s3://loka/e2e/agent/model"
    sft["spec"]["training"]["maxSteps"] = SFT_STEPS
    sft["spec"]["checkpoints"]["every"] = SFT_STEPS
    grpo["spec"]["training"].update(maxSteps=GRPO_STEPS, batchSize=BATCH, samplesPerPrompt=SAMPLES)
    grpo["spec"]["checkpoints"]["every"] = GRPO_STEPS
    return [sft, grpo]


def test_an_agent_learns_tool_calls_by_sft_then_trains_by_grpo_in_the_mcp_environment(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, toy_environment: ToyEnvironment
) -> None:
    upload_agent_assets(cluster, stack.layout.root, toy_environment.url, prefix="e2e")
    sft_manifest, grpo_manifest = e2e_agent_pipeline(e2e_namespace, toy_environment, cluster)
    before = toy_environment.stats()
    sft = apply(cluster, sft_manifest)
    grpo = apply(cluster, grpo_manifest)

    sft_final = sft.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the SFT run to succeed")
    assert sft_final["progress"]["step"] == SFT_STEPS
    final = grpo.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the GRPO run to succeed")
    assert final["source"]["run"] == "agent-sft" and final["source"]["step"] == SFT_STEPS
    assert final["progress"]["step"] == GRPO_STEPS

    # The environment counted one session and one evaluate call per episode: batch x samples x steps.
    after = toy_environment.stats()
    episodes = GRPO_STEPS * BATCH * SAMPLES
    assert after["calls"]["evaluate"] - before["calls"].get("evaluate", 0) == episodes
    assert after["calls"]["setup"] - before["calls"].get("setup", 0) == episodes
    assert after["sessions_closed"] - before["sessions_closed"] == episodes

    # Its figures per step, in the metrics file the status follows; the SFT'd model calls the tool.
    metrics_file = stack.work_dir / e2e_namespace / "agent-grpo" / "metrics.jsonl"
    steps = [r["data"] for r in map(json.loads, metrics_file.read_text().splitlines()) if "env/episodes" in r["data"]]
    assert [s["env/episodes"] for s in steps] == [BATCH * SAMPLES] * GRPO_STEPS
    for key in ("env/tool_calls/mean", "env/tool_success_rate", "reward/total/mean", "reward/task_completion/mean"):
        assert all(key in s for s in steps), key
    # 60 SFT steps teach the tiny model to attempt the call (the demo's 160 make it parse and succeed).
    assert sum(s["env/tool_calls/mean"] for s in steps) > 0, "the SFT'd model attempts tool calls"
    print("per step:", [{k: round(v, 3) for k, v in s.items() if k.startswith(("env/tool", "reward/total/mean"))}
                        for s in steps])  # fmt: skip
