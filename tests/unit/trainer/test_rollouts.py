"""Rollouts kept: which trajectories a step writes, their lines, and the reward figures logged every step (the trl
engine's reward adapter against a real judge server).
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest

from localcluster.judge_server import JudgeServer
from loka_api import RolloutsSpec
from loka_trainer.engines.trl import StepTap, trl_reward
from loka_trainer.reward_metrics import reward_step_metrics
from loka_trainer.rewards import judge as judge_module
from loka_trainer.rollouts import Trajectory, conversation, rollout_lines, select
from loka_trainer.status_reporter import progress_patch
from loka_trainer.step_metrics import parse_line


def groups_of(count: int, size: int) -> list[Trajectory]:
    return [
        Trajectory(group=g, messages=conversation("q", str(i)), score=float(i))
        for g in range(count)
        for i in range(size)
    ]


def test_a_share_keeps_whole_groups_and_the_same_ones_on_every_call() -> None:
    spec = RolloutsSpec(share=0.5)
    kept = select(groups_of(200, 4), step=3, spec=spec, seed="uid-1")
    groups = {t.group for t in kept}
    assert 60 < len(groups) < 140  # about half of 200 groups
    assert all(sum(t.group == g for t in kept) == 4 for g in groups)  # whole groups, so pairs stay possible
    assert kept == select(groups_of(200, 4), step=3, spec=spec, seed="uid-1")


def test_max_per_step_bounds_a_kept_step() -> None:
    kept = select(groups_of(50, 4), step=1, spec=RolloutsSpec(max_per_step=10), seed="s")
    assert len(kept) == 8  # two whole groups fit, the third would exceed the bound


def test_lines_carry_ids_groups_messages_components_and_score() -> None:
    trajectory = Trajectory(
        group=2,
        messages=conversation([{"role": "user", "content": "1+1?"}], "2"),
        score=0.5,
        components={"judge": 0.5, "judge_ok": 1.0},
        data_source="toy",
        ground_truth="2",
    )
    (line,) = rollout_lines([trajectory], step=7)
    assert line == {
        "id": "7-2-0",
        "step": 7,
        "group": "7-2",
        "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
        "score": 0.5,
        "components": {"judge": 0.5, "judge_ok": 1.0},
        "data_source": "toy",
        "ground_truth": "2",
    }
    json.dumps(line)


def test_the_newest_rollouts_step_reaches_status() -> None:
    metrics = parse_line(json.dumps({"step": 4, "data": {"training/global_step": 4, "rollouts/step": 4}}))
    assert metrics is not None
    assert progress_patch(metrics, 10)["rollouts"] == {"step": 4}


def test_reward_figures_of_a_step() -> None:
    rows = [
        {"score": 1.0, "format": 1.0, "judge": 1.0, "judge_ok": 1.0, "judge_error": 0.0, "judge_latency_s": 0.2,
         "judge_tokens": 10.0},
        {"score": 0.0, "format": 0.0, "judge": 0.0, "judge_ok": 0.0, "judge_error": 1.0, "judge_latency_s": 0.4,
         "judge_tokens": 0.0},
    ]  # fmt: skip
    figures = reward_step_metrics(rows)
    assert figures["reward/total/mean"] == 0.5
    assert figures["reward/total/std"] == 0.5
    assert (figures["reward/total/min"], figures["reward/total/max"]) == (0.0, 1.0)
    assert figures["reward/format/mean"] == 0.5 and figures["reward/judge/mean"] == 0.5
    assert "reward/judge_ok/mean" not in figures  # a judge's bookkeeping keys are its figures, not components
    assert figures["judge/error_rate"] == 0.5 and figures["judge/parse_rate"] == 1.0
    assert figures["judge/latency_s/mean"] == pytest.approx(0.3)


def test_the_trl_reward_asks_the_judge_logs_its_figures_and_taps_training_steps_only() -> None:
    judge_module._CLIENTS.clear()
    with JudgeServer() as server:
        compute = functools.partial(
            judge_module.compute_score, judge={"endpoint": server.url, "model": "digits", "backoffS": 0.01}
        )
        tap = StepTap(samples_per_prompt=2)
        reward = trl_reward(compute, samples_per_prompt=2, tap=tap)
        logged: dict[str, float] = {}

        def call(completions: list[str]) -> Any:
            prompts = [[{"role": "user", "content": "6*7?"}]] * len(completions)
            return asyncio.run(
                reward(
                    prompts=prompts,
                    completions=completions,
                    ground_truth=["42"] * len(completions),
                    data_source=["toy"] * len(completions),
                    log_metric=logged.__setitem__,
                )
            )

        assert call(["42", "x4"]) == [1.0, 0.5]  # validation: not tapped
        assert tap.trajectories == []
        tap.begin()
        assert call(["42", "x4", "abcd", "1a"]) == [1.0, 0.5, 0.0, 0.5]
        kept = tap.end()
    assert [t.group for t in kept] == [0, 0, 1, 1]
    assert kept[0].messages[-1] == {"role": "assistant", "content": "42"}
    assert kept[1].components["judge"] == 0.5 and kept[1].components["judge_ok"] == 1.0
    assert logged["judge/parse_rate"] == 1.0 and logged["judge/error_rate"] == 0.0
    assert logged["reward/total/mean"] == 0.5
    judge_module._CLIENTS.clear()


def test_verl_step_samples_group_by_prompt_uid_and_leave_padding_out() -> None:
    from loka_trainer.verl_hook import step_samples

    extra = {"reward_extra_info": {"score": 9.0, "judge": 0.5, "judge_ok": 1.0}}
    rows, trajectories = step_samples(
        ["p1_0_0", "p1_1_0", "p2_0_0", "pad_0_0"],
        prompts=[[{"role": "user", "content": "a"}], [{"role": "user", "content": "a"}], "b", None],
        responses=["x", "y", "z", ""],
        extra_fields=[extra, extra, None, None],
        data_sources=["toy", "toy", "toy", None],
        reward_models=[{"ground_truth": "1"}, {"ground_truth": "1"}, None, None],
        scores=[0.5, 0.25, 0.0, 0.0],
        padding=[False, False, False, True],
    )
    assert [row["score"] for row in rows] == [0.5, 0.25, 0.0]  # the score trained on, not the dict's own
    assert rows[0]["judge"] == 0.5
    assert [t.group for t in trajectories] == [0, 0, 1]
    assert trajectories[2].messages == [{"role": "user", "content": "b"}, {"role": "assistant", "content": "z"}]
    assert trajectories[0].ground_truth == "1"


def test_the_verl_hook_replaces_the_sync_trainer_with_a_subclass_of_verls() -> None:
    try:
        from verl.trainer.ppo.v1 import trainer_base
        from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    except ModuleNotFoundError as missing:  # verl's GPU stack (vLLM's deps) is in the image, not in every venv
        pytest.skip(f"verl's V1 trainer does not import here: {missing}")

    from loka_trainer.verl_hook import install

    original = trainer_base.TRAINER_REGISTRY["sync"]
    try:
        install()
        hooked = trainer_base.get_trainer_cls("sync")
        assert hooked is not PPOTrainerSync and issubclass(hooked, PPOTrainerSync)
        assert "_compute_metrics" in vars(hooked)
    finally:
        trainer_base.TRAINER_REGISTRY["sync"] = original
