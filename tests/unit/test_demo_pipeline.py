"""`make demo-pipeline`'s stages agree: its GRPO stage asks the prompts its SFT stage was taught on, and rewards
the answers SFT demonstrates in full, so the GRPO reward measures what SFT taught (the pipeline once asked GRPO
for a bare number after SFT taught <think>/<answer> tags, and its reward meant nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from localcluster.demo import pipeline_manifests, write_demo_datasets
from loka_trainer.engines.trl import load_reward


def rows(assets: Path, uri: str) -> list[dict[str, Any]]:
    table: list[dict[str, Any]] = pq.read_table(assets / uri.removeprefix("s3://loka/demo/")).to_pylist()
    return table


def test_the_grpo_stage_asks_and_rewards_what_the_sft_stage_taught(tmp_path: Path) -> None:
    sft, grpo = (manifest["spec"] for manifest in pipeline_manifests())
    write_demo_datasets(tmp_path)
    for split in ("train", "validation"):
        demonstrations = rows(tmp_path, sft["data"][split])
        prompts = rows(tmp_path, grpo["data"][split])
        assert [d["prompt"] for d in demonstrations] == [p["prompt"] for p in prompts], split
        reward = load_reward(grpo["reward"]["function"])
        scores = [reward("loka", d["response"], p["reward_model"]["ground_truth"], None)
                  for d, p in zip(demonstrations, prompts, strict=True)]  # fmt: skip
        assert scores == [1.0] * len(demonstrations), split
