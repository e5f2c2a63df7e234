"""The evaluation cycle's GPU proof on one GPU, after tests/gpu/unpack.sh (README.md beside this file):

1. an LLM judge: the tiny random Qwen2 served by a second vLLM (OpenAI API, 127.0.0.1:8011, 15% of the GPU), and
   GRPO (verl, ``judge-grpo.yaml``) rewarded by it, rollouts kept every step; checks that the judge's figures are in
   the metrics file every step and that no step waited much longer than the judge's timeout;
2. a reward model: ``algorithm: rm`` (TRL's RewardTrainer, engine trl, on the GPU) on the toy preference set, its
   pairwise accuracy on held-out pairs;
3. that reward model served by vLLM as a pooling model (``--runner pooling``, 127.0.0.1:8012, /classify), and a short
   GRPO run (``rm-reward-grpo.yaml``) rewarded by it; checks the ``rm`` figures in the metrics file.

    python3 tests/gpu/judge_rm_cycle.py [--own-machine]      # from the repository copy on the GPU machine

Prints one summary (figures, step times, the GPU seconds each stage took) and writes it to $OUT/judge-rm-cycle.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("LOKA_GPU_RESULTS", "/tmp/lkout"))
WORK = Path(os.environ.get("LOKA_GPU_WORK", "/tmp/lkwork")) / "cycle"
JUDGE_PORT, RM_PORT = 8011, 8012
JUDGE_TIMEOUT_S = 10.0


@contextlib.contextmanager
def vllm_server(model: Path, port: int, name: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (RESULTS / f"vllm-{name}.log").open("wb")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
            "--gpu-memory-utilization", "0.15", "--enforce-eager", "--max-model-len", "512", *extra]  # fmt: skip
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"vLLM {name} did not start (see {log.name})") from None
                time.sleep(2)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def run_grpo(name: str, manifest: str, own_machine: bool) -> tuple[list[dict[str, Any]], float]:
    started = time.monotonic()
    argv = [sys.executable, "tests/gpu/gpu_run.py", name, manifest, "--timeout", "540"]
    if own_machine:
        argv.append("--own-machine")
    subprocess.run(argv, cwd=REPO, check=True)
    metrics = RESULTS / name / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return records, time.monotonic() - started


def step_figures(records: list[dict[str, Any]], prefix: str) -> dict[int, dict[str, float]]:
    return {
        int(r["step"]): {k: v for k, v in r["data"].items() if k.startswith(prefix) or k in {"timing_s/step"}}
        for r in records
        if any(k.startswith(prefix) for k in r["data"])
    }


def train_reward_model() -> tuple[Path, list[float], float]:
    # TRL travels beside the site, not in it: verl 0.9.1's FSDP worker imports a class TRL 1.x no longer has whenever
    # TRL is importable. Only this process (the reward model's trainer) sees it; the GRPO runs are subprocesses.
    sys.path.insert(0, os.environ.get("LOKA_GPU_TRL", "/tmp/lk/trl"))
    from loka_api import TrainingRunSpec
    from loka_trainer.engines import EngineJob
    from loka_trainer.engines.trl import TrlEngine
    from loka_trainer.preferences import toy_preferences, write_pairs_parquet
    from loka_trainer.staging import StagedInputs
    from loka_trainer.step_metrics import parse_line
    from loka_trainer.tiny import build_tiny_model

    started = time.monotonic()
    root = WORK / "rm"
    model = build_tiny_model(root / "base")
    train = write_pairs_parquet(toy_preferences(480), root / "data" / "train.parquet")
    spec = TrainingRunSpec.model_validate(
        {
            "algorithm": "rm",
            "engine": "trl",
            "image": "loka:rl-train",
            "model": {"uri": "builtin://tiny-qwen2"},
            "data": {"train": "s3://loka/eval/preferences.jsonl", "maxPromptLength": 32, "maxResponseLength": 16},
            "training": {"maxSteps": 60, "batchSize": 16, "learningRate": 3.0e-3},
            "resources": {"workers": 0, "gpusPerWorker": 0},
            "checkpoints": {"uri": "s3://loka/ckpt", "every": 60},
        }
    )
    job = EngineJob(
        spec=spec, run_name="gpu-rm", namespace="loka", inputs=StagedInputs(str(model), train, None), work_dir=root,
        checkpoint_dir=root / "checkpoints", metrics_file=root / "metrics.jsonl", checkpoints=None, resume=None,
        on_checkpoint=lambda record: None, stop=threading.Event(), wandb_mode="disabled",
    )  # fmt: skip
    if TrlEngine().run(job) != 0:
        raise SystemExit("the reward model did not train")
    records = [m for m in map(parse_line, job.metrics_file.read_text().splitlines()) if m is not None]
    accuracies = [m.pairwise_accuracy for m in records if m.pairwise_accuracy is not None]
    checkpoint = job.checkpoint_dir / "checkpoint-60"
    # vLLM serves the tokenizer from the model folder: the trainer saved it there (processing_class).
    return checkpoint, accuracies, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--own-machine", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image")]
    from loka_trainer.tiny import build_tiny_model

    summary: dict[str, Any] = {}
    judge_model = build_tiny_model(WORK / "judge-model")
    started = time.monotonic()
    with vllm_server(judge_model, JUDGE_PORT, "judge"):
        records, seconds = run_grpo("gpu-judge", "tests/gpu/judge-grpo.yaml", args.own_machine)
    judge = step_figures(records, "judge/")
    steps = {step: figures.get("timing_s/step") for step, figures in judge.items()}
    summary["judge"] = {"steps": judge, "seconds": round(time.monotonic() - started, 1), "run_seconds": round(seconds)}
    assert judge, "no judge/ figures in the metrics file"
    assert all("judge/parse_rate" in f and "judge/error_rate" in f for f in judge.values())
    slowest = max((s for s in steps.values() if s is not None), default=0.0)
    summary["judge"]["slowest_step_s"] = slowest
    rollouts = [r["data"].get("rollouts/step") for r in records if "rollouts/step" in r["data"]]
    summary["judge"]["rollouts_steps"] = rollouts

    checkpoint, accuracies, seconds = train_reward_model()
    summary["rm"] = {"pairwise_accuracy": accuracies, "seconds": round(seconds, 1), "checkpoint": str(checkpoint)}
    started = time.monotonic()
    with vllm_server(checkpoint, RM_PORT, "rm", "--runner", "pooling"):
        with urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{RM_PORT}/classify",
                data=json.dumps({"model": "rm", "input": ["user: 1+1?\nassistant: 2"]}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=30,
        ) as answer:
            summary["rm"]["classify_example"] = json.loads(answer.read())
        records, seconds = run_grpo("gpu-rm-reward", "tests/gpu/rm-reward-grpo.yaml", args.own_machine)
    rm = step_figures(records, "reward/rm")
    summary["rm_reward"] = {"steps": rm, "seconds": round(time.monotonic() - started, 1), "run_seconds": round(seconds)}
    assert rm, "no reward/rm figures in the metrics file"

    out = Path(os.environ.get("OUT", str(RESULTS)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge-rm-cycle.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
