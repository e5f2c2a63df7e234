"""End to end: `make demo-cycle`'s RewardCycle through the operator, Kueue, KubeRay, a real Ray and the trainer (trl
on CPU): GRPO keeping its rollouts, an Evaluation of them by two judges on the local judge server, a reward model on
their preferences, and the next GRPO burst from the first one's final checkpoint, rewarded by that reward model
(served here by loka_trainer.rm_server, as the demo does). The stages are chained by their own fields alone.

The bursts are half the demo's (4 steps, rollouts of steps 2 and 4), the reward model 16 steps: about 90 s once the
stack is up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localcluster.controlplane import LocalCluster
from localcluster.cycle_demo import RewardModelServer, cycle_manifest, follow_cycle, hold_evaluations
from localcluster.demo import demo_client
from localcluster.judge_server import JudgeServer
from localcluster.operator_process import free_port
from localcluster.stack import DemoStack

BURST_STEPS = 4  # rollouts kept every 2 steps: 2 x 4 prompts x 4 samples judged


def e2e_cycle(namespace: str, *, storage: str, judge: str, reward_model: str) -> dict[str, Any]:
    """The demo's cycle in an e2e namespace and its queue (4 CPUs: one stage at a time), on the e2e assets."""
    body = cycle_manifest(storage=storage, judge=judge, reward_model=reward_model)
    body["metadata"] = {"name": "cyc", "namespace": namespace}
    spec = body["spec"]
    for template in (spec["rl"], spec["rewardModel"]):
        template["queue"] = {"name": "e2e", "clusterQueue": namespace}
        template["resources"] |= {"head": {"cpu": "1", "memory": "2Gi"}, "worker": {"cpu": "2", "memory": "2Gi"}}
        template["model"]["uri"] = "s3://loka/e2e/model"
    spec["rl"]["data"]["train"] = "s3://loka/e2e/data/train.parquet"
    spec["rl"]["training"]["maxSteps"] = BURST_STEPS
    spec["rewardModel"]["training"]["maxSteps"] = spec["rewardModel"]["checkpoints"]["every"] = 16
    spec["evaluation"]["output"]["uri"] = f"s3://loka/e2e/evals/{namespace}/"
    return body


def metric(stack: DemoStack, namespace: str, run: str, key: str) -> list[float]:
    lines = (stack.work_dir / namespace / run / "metrics.jsonl").read_text().splitlines()
    return [float(r["data"][key]) for r in map(json.loads, filter(None, lines)) if key in r.get("data", {})]


def test_a_reward_cycle_trains_a_reward_model_on_judged_rollouts_and_rewards_the_next_burst_with_it(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, tmp_path: Path
) -> None:
    rm = RewardModelServer(free_port(), tmp_path / "rm-server.log")
    hold_evaluations(cluster, hold=True)
    with JudgeServer() as judge, demo_client(cluster, e2e_namespace) as client:
        manifest = e2e_cycle(e2e_namespace, storage=cluster.s3_endpoint, judge=judge.url, reward_model=rm.url)
        client.cycles.submit(manifest)
        try:
            final = follow_cycle(cluster, client, "cyc", rm=rm, work=tmp_path, timeout=600)
        finally:
            rm.stop()
        assert final.status.phase == "Succeeded", final.status.message
        rows = [[(s.name, s.phase) for s in row.stages] for row in final.status.iterations]
        assert rows == [[("cyc-1-rl", "Succeeded"), ("cyc-1-eval", "Succeeded"), ("cyc-1-rm", "Succeeded")],
                        [("cyc-2-rl", "Succeeded")]]  # fmt: skip

        # Each stage found the one before by its own field, and recorded what it took from it.
        first, evaluation = client.get("cyc-1-rl"), client.evaluations.get("cyc-1-eval")
        assert first.status.rollouts is not None and evaluation.status.rollouts_uri == first.status.rollouts.uri
        assert evaluation.status.samples_judged == evaluation.status.samples == 32
        assert evaluation.status.preferences
        reward_model = client.get("cyc-1-rm")
        assert reward_model.status.train_data is not None
        assert reward_model.status.train_data.uri == evaluation.status.preferences_uri
        second = client.get("cyc-2-rl")
        assert second.status.source is not None
        assert (second.status.source.run, second.status.source.step) == ("cyc-1-rl", BURST_STEPS)
        assert reward_model.status.checkpoint is not None and rm.serving == reward_model.status.checkpoint.uri

    # The next burst was rewarded by the reward model: its component answered at every step.
    scores = metric(stack, e2e_namespace, "cyc-2-rl", "reward/rm/mean")
    assert len(scores) == BURST_STEPS and all(0.0 < s <= 1.0 for s in scores), scores
