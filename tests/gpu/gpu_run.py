"""One `loka-trainer run` with engine verl on the GPU machine, against a local MinIO and a stand-in API.

Run from the repository root there, after tests/gpu/unpack.sh (README.md beside this file says how):

    python3 tests/gpu/gpu_run.py NAME MANIFEST [--set spec.training.maxSteps=12 ...]
                                 [--sigterm-after-checkpoint N] [--timeout SECONDS]

Each run is a fresh pod: its local work dir is wiped, so a run whose checkpoints already sit in MinIO (same
run name, MinIO's data kept under /tmp/lkwork between runs) must resume from S3. With
``--sigterm-after-checkpoint N`` the trainer gets SIGTERM halfway through the first step after checkpoint N is
marked. Results: a summary on stdout, $OUT/NAME.tgz (trainer log, status patches, metrics, per-step times,
the S3 listing, summary.json).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(os.environ.get("LOKA_GPU_BUNDLE", "/tmp/lk"))
WORK = Path(os.environ.get("LOKA_GPU_WORK", "/tmp/lkwork"))
RESULTS = Path(os.environ.get("LOKA_GPU_RESULTS", "/tmp/lkout"))
S3_PORT = int(os.environ.get("LOKA_GPU_S3_PORT", "9000"))
KUBE_PORT = int(os.environ.get("LOKA_GPU_KUBE_PORT", "39555"))
BUCKET = "loka"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "loka", "AWS_SECRET_ACCESS_KEY": "loka-smoke-secret"}
LOG_LIMIT = 6 * 1024 * 1024  # the trainer log's tail that comes back


def environment() -> dict[str, str]:
    """The trainer's environment: the bundle and this checkout's packages, S3, and what the bundle lacks."""
    paths = [REPO / "api", REPO / "trainer-image", REPO, BUNDLE / "site"]  # a wheel ships a top-level tests
    return {
        **os.environ,
        "PYTHONPATH": ":".join(str(p) for p in paths),
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "VLLM_USE_FLASHINFER_SAMPLER": "0",  # the bundle leaves flashinfer out
        "NCCL_NVLS_ENABLE": "0",  # the GPU machine's rule: no NVLink multicast
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }


def s3_client() -> Any:
    if str(BUNDLE / "site") not in sys.path:
        sys.path.append(str(BUNDLE / "site"))  # boto3 comes with the bundle; the machine's own packages first
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}", region_name="us-east-1",
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def start_minio(results: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MINIO_ROOT_USER": CREDENTIALS["AWS_ACCESS_KEY_ID"],
           "MINIO_ROOT_PASSWORD": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    command = [str(BUNDLE / "minio"), "server", str(WORK / "minio-data"), "--address", f"127.0.0.1:{S3_PORT}",
               "--console-address", f"127.0.0.1:{S3_PORT + 1}"]  # fmt: skip
    minio = subprocess.Popen(command, env=env, stdout=(results / "minio.log").open("wb"), stderr=subprocess.STDOUT)
    s3 = s3_client()
    for _ in range(300):
        try:
            buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
            break
        except Exception:
            time.sleep(0.1)
    else:
        raise SystemExit("MinIO did not come up")
    if BUCKET not in buckets:
        s3.create_bucket(Bucket=BUCKET)
    return minio


def set_path(body: dict[str, Any], dotted: str) -> None:
    key, _, raw = dotted.partition("=")
    *parents, leaf = key.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def checkpoint_state(prefix: str) -> dict[str, Any]:
    """Steps with files, steps with a manifest (complete), the marker, and bytes per step, from S3."""
    s3 = s3_client()
    objects: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        objects += page.get("Contents", [])
    steps: dict[int, dict[str, Any]] = {}
    marker = None
    for item in objects:
        rest = item["Key"][len(prefix) + 1 :]
        if rest == "latest":
            marker = json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
        elif rest.startswith("global_step_"):
            step = int(rest.split("/", 1)[0].removeprefix("global_step_"))
            entry = steps.setdefault(step, {"files": 0, "bytes": 0, "complete": False, "manifest_time": None})
            entry["files"] += 1
            entry["bytes"] += item["Size"]
            if rest.endswith("/loka-manifest.json"):
                entry["complete"] = True
                entry["manifest_time"] = item["LastModified"].timestamp()
    return {"marker": marker, "steps": {str(k): v for k, v in sorted(steps.items())}}


def verl_processes() -> dict[int, str]:
    """verl's and Ray's processes still running on this machine, by pid."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    wanted = ("verl.trainer.main_ppo", "ray::", "raylet", "gcs_server")
    found = (line.strip().split(None, 1) for line in out.splitlines() if any(w in line for w in wanted))
    return {int(pid): args[:160] for pid, args in found if int(pid) != os.getpid()}


def read_steps(metrics: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    if not metrics.is_file():
        return offset, []
    with metrics.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return offset + len(complete), records


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="sets", help="spec.path=value (YAML value)")
    parser.add_argument("--sigterm-after-checkpoint", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument(
        "--own-machine",
        action="store_true",
        help="nothing else runs here (the GPU machine): clear Ray's address file, kill what is left",
    )
    parser.add_argument(
        "--standin",
        action="store_true",
        help="launch tests/trainer/verl_standin.py instead of verl: a CPU rehearsal of this script",
    )
    args = parser.parse_args()

    results = RESULTS / args.name
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    WORK.mkdir(parents=True, exist_ok=True)
    pod = WORK / "pod"
    shutil.rmtree(pod, ignore_errors=True)  # a new pod: nothing on local disk
    if args.own_machine:  # a dead cluster's address would make the trainer try to join it
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)
    body = next(d for d in yaml.safe_load_all(args.manifest.read_text()) if d and d.get("kind") == "TrainingRun")
    for dotted in args.sets:
        set_path(body, dotted)
    body["spec"]["storage"] = {"endpoint": f"http://127.0.0.1:{S3_PORT}", "credentialsSecret": "loka-s3"}
    (results / "run.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    checkpoints = body["spec"]["checkpoints"]
    prefix = "/".join([checkpoints["uri"].removeprefix(f"s3://{BUCKET}/").strip("/"), namespace, name])
    every = int(checkpoints["every"])

    minio = start_minio(results)
    before = checkpoint_state(prefix)
    kube = subprocess.Popen([sys.executable, str(REPO / "tests/gpu/fake_kube.py"), str(results / "run.yaml"),
                             str(KUBE_PORT), str(results / "status.jsonl")])  # fmt: skip
    time.sleep(1)
    env = {**environment(), "LOKA_RUN_NAME": name, "LOKA_RUN_NAMESPACE": namespace}
    launcher = ["tests.trainer.verl_standin", "trainer"] if args.standin else ["loka_trainer.cli"]
    command = [sys.executable, "-m", *launcher, "run", "--kubeconfig", str(results / "kubeconfig.yaml"),
               "--work-dir", str(pod)]  # fmt: skip
    metrics = pod / namespace / name / "metrics.jsonl"
    started = time.time()
    with (results / "trainer.log").open("wb") as log:
        trainer = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    step_times: list[dict[str, Any]] = []
    offset, sigterm_at, marker_step, next_marker_read = 0, None, None, 0.0
    deadline = started + args.timeout
    try:
        while trainer.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            offset, records = read_steps(metrics, offset)
            now = time.time()
            step_times += [{"step": r["step"], "time": now, "data": r.get("data", {})} for r in records]
            if args.sigterm_after_checkpoint is not None and sigterm_at is None and now >= next_marker_read:
                next_marker_read = now + 1
                marker_step = (checkpoint_state(prefix)["marker"] or {}).get("step")
                seen = [s["step"] for s in step_times]
                if marker_step is not None and marker_step >= args.sigterm_after_checkpoint and marker_step in seen:
                    # Halfway through the step after the checkpoint: SIGTERM in the middle of a step.
                    durations = [b["time"] - a["time"] for a, b in itertools.pairwise(step_times)]
                    half = statistics.median(durations) / 2 if durations else 1.0
                    time.sleep(half)
                    sigterm_at = {"time": time.time(), "marker": marker_step, "last_step_done": step_times[-1]["step"],
                                  "half_step_s": round(half, 2)}  # fmt: skip
                    trainer.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        trainer.wait(timeout=60)
        if trainer.poll() is None:
            trainer.kill()
        code = trainer.wait()
        ended = time.time()
        left_running = verl_processes() if args.own_machine else {}
        after = checkpoint_state(prefix)
        time.sleep(5)  # nothing may move the marker once the trainer is gone
        later = checkpoint_state(prefix)
    finally:
        for process in (trainer, kube, minio):
            if process.poll() is None:
                process.kill()
        for pid in verl_processes() if args.own_machine else {}:  # left by this run: free the GPU for the next
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    log_text = (results / "trainer.log").read_bytes()
    if len(log_text) > LOG_LIMIT:
        (results / "trainer.log").write_bytes(log_text[-LOG_LIMIT:])
    if metrics.is_file():
        shutil.copy(metrics, results / "metrics.jsonl")
    (results / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in step_times))
    statuses = [json.loads(line) for line in (results / "status.jsonl").read_text().splitlines()] if (
        results / "status.jsonl").is_file() else []  # fmt: skip
    resumed = [line for line in log_text.decode(errors="replace").splitlines() if "resuming from checkpoint" in line]
    summary = {
        "name": args.name,
        "exit_code": code,
        "wall_s": round(ended - started, 1),
        "launch_to_first_step_s": round(step_times[0]["time"] - started, 1) if step_times else None,
        "steps_seen": [s["step"] for s in step_times],
        "resumed": resumed[-1][-80:] if resumed else None,
        "sigterm": sigterm_at,
        "exit_after_sigterm_s": round(ended - sigterm_at["time"], 1) if sigterm_at else None,
        "checkpoints_before": before,
        "checkpoints_after": after,
        "marker_moved_after_exit": (after["marker"] or {}).get("step") != (later["marker"] or {}).get("step"),
        "objects_changed_after_exit": after["steps"] != later["steps"],
        "every": every,
        "left_running": list(left_running.values()),
        "last_status": statuses[-1]["status"] if statuses else None,
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    out = Path(os.environ.get("OUT", "/tmp"))
    with tarfile.open(out / f"{args.name}.tgz", "w:gz") as archive:
        archive.add(results, arcname=args.name)
    marker = (after["marker"] or {}).get("step")
    complete = [int(k) for k, v in after["steps"].items() if v["complete"]]
    print(f"== {args.name}: exit {code} after {summary['wall_s']} s; launch→first step "
          f"{summary['launch_to_first_step_s']} s; steps {summary['steps_seen']}")  # fmt: skip
    print(f"   resumed: {summary['resumed']}")
    moved = summary["marker_moved_after_exit"] or summary["objects_changed_after_exit"]
    print(f"   S3: marker {marker}, complete {complete}, all {list(after['steps'])}; moved after exit: {moved}")
    if sigterm_at:
        print(f"   SIGTERM {sigterm_at} → exit {code} in {summary['exit_after_sigterm_s']} s; "
              f"left running: {list(left_running.values())}")  # fmt: skip
    last = summary["last_status"] or {}
    print(f"   status: progress {last.get('progress')} checkpoint {last.get('checkpoint')} "
          f"message {last.get('message')!r}")  # fmt: skip
    if code not in (0, 143):
        tail = log_text.decode(errors="replace").splitlines()
        print("\n".join(line[:300] for line in tail if "Error" in line or "Traceback" in line)[-3000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
