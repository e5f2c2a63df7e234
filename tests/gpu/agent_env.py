"""Agents in an MCP environment, the GPU proof on one GPU, after tests/gpu/unpack.sh (README.md beside this file):

1. the toy MCP environment (localcluster/mcp_env.py: the MCP SDK's FastMCP over streamable HTTP) on 127.0.0.1:8765,
   and `make demo-agent`'s assets (a tiny Qwen2 whose tokenizer knows the episodes' text, tool-use transcripts,
   reach-N tasks; localcluster/agent_demo.py) put in the local MinIO;
2. SFT with verl on the transcripts (``agent-sft.yaml``);
3. GRPO with verl and vLLM from the SFT run's final checkpoint in the environment (``agent-grpo.yaml``: 4 steps, a
   checkpoint every 2): the environment counts exactly batch x samples x 4 evaluate calls, and the metrics file
   has the env/* and reward/* figures at every step;
4. the same run again with 6 steps: it resumes from its step-4 checkpoint in MinIO and the environment counts
   batch x samples x 2 more evaluate calls;
5. a fresh run whose environment starts failing after its first step (every 3rd setup fails, onEnvError: drop):
   it finishes, the failed episodes' groups dropped (env/error_rate > 0 in some step), nothing crashes.

    python3 tests/gpu/agent_env.py [--own-machine]     # from the repository copy on the GPU machine
    python3 tests/gpu/agent_env.py --prepare-only      # anywhere: serve the environment, build the assets, stop

Prints one summary (counts, figures per step, the GPU seconds each stage took) and writes it to
$OUT/agent-env.json; each stage's results are gpu_run.py's ($OUT/NAME.tgz).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(os.environ.get("LOKA_GPU_BUNDLE", "/tmp/lk"))
RESULTS = Path(os.environ.get("LOKA_GPU_RESULTS", "/tmp/lkout"))
WORK = Path(os.environ.get("LOKA_GPU_WORK", "/tmp/lkwork"))
ENV_PORT = 8765  # agent-grpo.yaml's environment URL
BATCH, SAMPLES = 4, 4  # agent-grpo.yaml's training.batchSize and samplesPerPrompt
STEPS, RESUMED_STEPS = 4, 6
FAIL_SETUP_EVERY = 3
GRPO = "tests/gpu/agent-grpo.yaml"


def control(base: str, **settings: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/control", data=json.dumps(settings).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def upload_assets(assets: Path) -> list[str]:
    """The agent assets into the local MinIO under s3://loka/agent/ (MinIO's data outlives it, under WORK)."""
    from tests.gpu.gpu_run import BUCKET, start_minio

    RESULTS.mkdir(parents=True, exist_ok=True)
    minio = start_minio(RESULTS)
    try:
        from tests.gpu.gpu_run import s3_client

        s3, keys = s3_client(), []
        for folder in ("model", "sft", "tasks"):
            for path in sorted((assets / folder).rglob("*")):
                if path.is_file():
                    key = f"agent/{path.relative_to(assets).as_posix()}"
                    s3.upload_file(str(path), BUCKET, key)
                    keys.append(key)
        return keys
    finally:
        minio.kill()
        minio.wait()


def run_stage(name: str, *sets: str, own_machine: bool, during: Any = None) -> tuple[list[dict[str, Any]], float]:
    """One `loka-trainer run` through gpu_run.py (a fresh pod; MinIO and the stand-in API); its metrics records."""
    argv = [sys.executable, "tests/gpu/gpu_run.py", name, GRPO if "grpo" in name else "tests/gpu/agent-sft.yaml",
            "--timeout", "540", *(arg for s in sets for arg in ("--set", s))]  # fmt: skip
    if own_machine:
        argv.append("--own-machine")
    started = time.monotonic()
    stage = subprocess.Popen(argv, cwd=REPO)
    watcher = threading.Thread(target=during, daemon=True) if during is not None else None
    if watcher is not None:
        watcher.start()
    stage.wait()
    results = RESULTS / name
    trainer_exit = json.loads((results / "summary.json").read_text())["exit_code"] if results.is_dir() else None
    if stage.returncode != 0 or trainer_exit != 0:
        raise SystemExit(f"stage {name} failed (gpu_run.py {stage.returncode}, trainer {trainer_exit}); see {results}")
    lines = (results / "metrics.jsonl").read_text().splitlines() if (results / "metrics.jsonl").is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return records, time.monotonic() - started


def env_steps(records: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """The environment's and the rubric's figures per training step."""
    return {
        int(r["step"]): {k: round(float(v), 4) for k, v in r["data"].items() if k.startswith(("env/", "reward/"))}
        for r in records
        if "env/episodes" in r.get("data", {})
    }


def fail_after_first_step(base: str, name: str) -> Any:
    """A watcher for stage 5: once the run's first step is in its metrics file, every 3rd setup fails."""

    def watch() -> None:
        metrics = WORK / "pod" / "loka" / "gpu-agent-grpo" / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if metrics.is_file() and any('"env/episodes"' in line for line in metrics.read_text().splitlines()):
                control(base, fail_setup_every=FAIL_SETUP_EVERY)
                print(f"== {name}: the environment now fails every {FAIL_SETUP_EVERY}rd setup", flush=True)
                return
            time.sleep(0.5)

    return watch


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--own-machine", action="store_true", help="passed to gpu_run.py (the GPU machine only)")
    parser.add_argument("--prepare-only", action="store_true", help="serve the environment, build the assets, stop")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image"), str(REPO)]
    if (BUNDLE / "site").is_dir():
        sys.path.append(str(BUNDLE / "site"))  # the machine's own packages first
    from localcluster.agent_demo import build_agent_assets, start_toy_environment

    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the environment's process imports the same
    environment = start_toy_environment(ENV_PORT, RESULTS / "mcp-env.log")
    summary: dict[str, Any] = {"environment": environment.url}
    try:
        started = time.monotonic()
        assets = build_agent_assets(WORK / "agent-assets", environment.url)
        summary["assets"] = {"folder": str(assets), "seconds": round(time.monotonic() - started, 1)}
        print(f"== assets in {assets}; the environment at {environment.url}: {environment.stats()}", flush=True)
        if args.prepare_only:
            return 0
        summary["assets"]["uploaded"] = len(upload_assets(assets))

        records, seconds = run_stage("gpu-agent-sft", own_machine=args.own_machine)
        losses = [r["data"]["train/loss"] for r in records if "train/loss" in r.get("data", {})]
        summary["sft"] = {"seconds": round(seconds), "loss_first_last": losses[:1] + losses[-1:]}

        def evaluated() -> int:
            return int(environment.stats()["calls"].get("evaluate", 0))

        before = evaluated()
        records, seconds = run_stage("gpu-agent-grpo", own_machine=args.own_machine)
        steps = env_steps(records)
        counted = evaluated() - before
        summary["grpo"] = {"seconds": round(seconds), "evaluate_calls": counted, "steps": steps}
        assert counted == BATCH * SAMPLES * STEPS, f"evaluate called {counted} times, not {BATCH * SAMPLES * STEPS}"
        assert sorted(steps) == list(range(1, STEPS + 1)), f"env/* figures at steps {sorted(steps)}"
        for figures in steps.values():
            assert {"env/tool_calls/mean", "env/tool_success_rate", "reward/total/mean"} <= figures.keys(), figures

        before = evaluated()
        records, seconds = run_stage(
            "gpu-agent-grpo", f"spec.training.maxSteps={RESUMED_STEPS}", own_machine=args.own_machine
        )
        steps = env_steps(records)
        counted = evaluated() - before
        more = RESUMED_STEPS - STEPS
        summary["resume"] = {"seconds": round(seconds), "evaluate_calls": counted, "steps": steps}
        assert counted == BATCH * SAMPLES * more, f"evaluate called {counted} times after the resume"
        assert sorted(steps) == list(range(STEPS + 1, RESUMED_STEPS + 1)), f"resumed at steps {sorted(steps)}"

        # Stage 5: a new run (its own checkpoints: another uri), the environment failing from its second step on.
        fresh = "spec.checkpoints.uri=s3://loka/agent-gpu-failing/"
        calls_before = environment.stats()["calls"]
        records, seconds = run_stage(
            "gpu-agent-grpo-failing", fresh, own_machine=args.own_machine,
            during=fail_after_first_step(environment.base, "gpu-agent-grpo-failing"),
        )  # fmt: skip
        steps = env_steps(records)
        control(environment.base, fail_setup_every=0)
        calls = environment.stats()["calls"]
        failed = (calls["setup"] - calls_before["setup"]) - (calls["evaluate"] - calls_before["evaluate"])
        # A dropped group leaves the step: fewer episodes in its figures (verl pads it out), or counted as errors.
        per_step = {step: (f.get("env/episodes"), f.get("env/error_rate")) for step, f in steps.items()}
        summary["failing"] = {"seconds": round(seconds), "failed_setups": failed, "episodes_and_error_rate": per_step,
                              "steps": steps}  # fmt: skip
        assert sorted(steps) == list(range(1, STEPS + 1)), f"the failing run's steps: {sorted(steps)}"
        assert failed > 0, "the environment never failed a setup"
        assert any((n or 0) < BATCH * SAMPLES or (e or 0) > 0 for n, e in per_step.values()), per_step
    finally:
        summary["environment_stats"] = environment.stats() if environment.process.poll() is None else None
        environment.stop()
        out = Path(os.environ.get("OUT", str(RESULTS)))
        out.mkdir(parents=True, exist_ok=True)
        (out / "agent-env.json").write_text(json.dumps(summary, indent=2, default=str))
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
