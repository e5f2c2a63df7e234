"""algorithm rm: TRL's RewardTrainer on the trl engine learns a separable toy preference set (pairwise accuracy on
held-out pairs into the metrics that feed status), and its checkpoint loads as a sequence-classification model.
On CPU, no cluster: the engine as the runner calls it, the preferences staged as the runner stages them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loka_api import TrainingRunSpec
from loka_api.models import RewardComponent
from loka_api.recipes.grpo import rubric_json
from loka_trainer.engines import EngineJob
from loka_trainer.engines.trl import TrlEngine
from loka_trainer.preferences import read_pairs, toy_preferences, write_pairs_parquet
from loka_trainer.rewards import compose
from loka_trainer.rewards import reward_model as rm_reward
from loka_trainer.staging import StagedInputs
from loka_trainer.step_metrics import PAIRWISE_ACCURACY, parse_line
from loka_trainer.tiny import build_tiny_model

STEPS = 40


def rm_spec() -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {
            "algorithm": "rm",
            "engine": "trl",
            "image": "loka:rl-train",
            "model": {"uri": "builtin://tiny-qwen2"},
            "data": {"train": "s3://loka/eval/preferences.jsonl", "maxPromptLength": 32, "maxResponseLength": 16},
            "training": {"maxSteps": STEPS, "batchSize": 16, "learningRate": 3.0e-3},
            "resources": {"workers": 0, "gpusPerWorker": 0},
            "checkpoints": {"uri": "s3://loka/ckpt", "every": 15},
        }
    )


def test_a_reward_model_separates_held_out_pairs_and_loads_as_a_classifier(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    preferences = tmp_path / "preferences.jsonl"
    preferences.write_text("".join(json.dumps(p) + "\n" for p in toy_preferences(240)))
    train = write_pairs_parquet(read_pairs(preferences, label="preferences.jsonl"), tmp_path / "data" / "train.parquet")
    job = EngineJob(
        spec=rm_spec(),
        run_name="rm",
        namespace="test",
        inputs=StagedInputs(str(model), train, None),
        work_dir=tmp_path,
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
        checkpoints=None,
        resume=None,
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode="disabled",
    )

    assert TrlEngine().run(job) == 0

    records = [m for m in map(parse_line, job.metrics_file.read_text().splitlines()) if m is not None]
    accuracies = [(m.step, m.pairwise_accuracy) for m in records if m.pairwise_accuracy is not None]
    assert [step for step, _ in accuracies] == [15, 30, STEPS], accuracies  # each checkpoint, and the end once
    assert accuracies[-1][1] >= 0.9, accuracies  # held-out pairs: a tenth of the set, never trained on
    assert any(m.loss is not None for m in records)
    assert any(PAIRWISE_ACCURACY in m.raw for m in records)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = job.checkpoint_dir / f"checkpoint-{STEPS}"
    classifier = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert classifier.config.num_labels == 1
    assert type(classifier).__name__.endswith("ForSequenceClassification")
    tokenizer = AutoTokenizer.from_pretrained(model)
    pair = toy_preferences(1, seed=99)[0]

    def reward(answer: list[dict[str, str]]) -> float:
        text = tokenizer.apply_chat_template(pair["prompt"] + answer, tokenize=False)
        with torch.no_grad():
            return float(classifier(**tokenizer(text, return_tensors="pt")).logits[0, 0])

    assert reward(pair["chosen"]) > reward(pair["rejected"])

    # Served (the CPU server, real HTTP) and asked by the reward-model component as the next RL run would.
    with rm_server(checkpoint) as url:
        settings = {"endpoint": url, "backoffS": 0.01}
        prompt = pair["prompt"]
        chosen = asyncio.run(rm_reward.compute_score("toy", pair["chosen"][0]["content"], None, {"prompt": prompt},
                                                     reward_model=settings))  # fmt: skip
        rejected = asyncio.run(rm_reward.compute_score("toy", pair["rejected"][0]["content"], None, {"prompt": prompt},
                                                       reward_model=settings))  # fmt: skip
        # The same server as a component of the next run's spec.reward (kind rewardModel), through the recipe.
        component = RewardComponent.model_validate(
            {"name": "prefs", "kind": "rewardModel", "rewardModel": {"endpoint": url}}
        )
        in_rubric = asyncio.run(compose.compute_score("toy", pair["chosen"][0]["content"], None, {"prompt": prompt},
                                                      rubric=rubric_json([component])))  # fmt: skip
    assert in_rubric["prefs"] == pytest.approx(chosen["rm"]) and in_rubric["prefs_ok"] == 1.0
    assert in_rubric["score"] == pytest.approx(chosen["rm"])
    assert chosen["rm_ok"] == rejected["rm_ok"] == 1.0
    assert chosen["score"] > rejected["score"]
    assert chosen["rm"] == pytest.approx(1 / (1 + math.exp(-reward(pair["chosen"]))), abs=1e-4)
    # The server gone: the component scores its failure score under the same keys, and the call returns.
    down = asyncio.run(rm_reward.compute_score("toy", "1", None, {"prompt": prompt}, reward_model=settings))
    assert set(down) == set(chosen) and down["rm_ok"] == 0.0 and down["score"] == 0.0
    rm_reward._CLIENTS.clear()


@contextlib.contextmanager
def rm_server(checkpoint: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "loka_trainer.rm_server", "--model", str(checkpoint), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the reward-model server did not answer on {url} (exit {server.poll()})")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_bad_preference_rows_are_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl line 2: missing rejected"):
        read_pairs(path, label="p.jsonl")
