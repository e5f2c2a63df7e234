"""`make demo`: a real TrainingRun end to end on this machine.

Starts the local control plane (or reuses it), a real Ray head, the dashboard router, the
operator and the pod shim; builds a tiny model and dataset and puts them in MinIO; applies
`examples/demo-run.yaml` and follows it live through Queued → Starting → Running → Succeeded;
then prints a summary. Nothing is faked but the kubelet (KWOK, plus the pod shim).

    python -m localcluster.demo          # run the demo (idempotent: a previous demo run is replaced)
    python -m localcluster.demo --down   # stop what the demo started (the control plane stays up)
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster.build import build_all, is_built
from localcluster.controlplane import LOCALHOST, PORTS, REPO_ROOT, S3_BUCKET, ClusterError, LocalCluster
from localcluster.stack import DemoStack

DEMO_RUN = REPO_ROOT / "examples" / "demo-run.yaml"
TERMINAL = {"Succeeded", "Failed"}


@dataclass
class Timeline:
    """What the follower saw: when each phase first appeared."""

    applied: float
    phases: dict[str, float] = field(default_factory=dict)

    def seconds_to(self, phase: str) -> float | None:
        return self.phases[phase] - self.applied if phase in self.phases else None


def demo_manifest() -> dict[str, Any]:
    """examples/demo-run.yaml with its S3 endpoint on this checkout's MinIO (LOKA_CLUSTER_PORT_OFFSET moves it)."""
    manifest: dict[str, Any] = yaml.safe_load(DEMO_RUN.read_text())
    manifest["spec"]["storage"]["endpoint"] = f"http://{LOCALHOST}:{PORTS.minio}"
    return manifest


def s3_client(cluster: LocalCluster) -> Any:
    import boto3

    env = cluster.env
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def prepare_namespace(cluster: LocalCluster, namespace: str, *, cluster_queue: str, cpu: int = 8) -> None:
    """Namespace, the S3 credentials Secret, and a ClusterQueue (the operator makes the LocalQueue)."""
    env = cluster.env
    cluster.kubectl("create", "namespace", namespace, check=False)
    # `data`, not `stringData`: the operator then sees the key names in the Secret's metadata, no values.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "loka-s3", "namespace": namespace},
        "data": {key: base64.b64encode(env[key].encode()).decode()
                 for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }  # fmt: skip
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default"}}
    queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": cluster_queue},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": "default",
                            "resources": [
                                {"name": "cpu", "nominalQuota": str(cpu)},
                                {"name": "memory", "nominalQuota": "32Gi"},
                                {"name": "nvidia.com/gpu", "nominalQuota": "8"},
                            ],
                        }
                    ],
                }
            ],
        },
    }
    # Applied from stdin so the Secret's values never appear on a command line.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=yaml.safe_dump_all([secret, flavor, queue]))  # fmt: skip


# What build_demo_assets makes; a folder built to another recipe (an older checkout's) is rebuilt.
ASSETS_RECIPE = "tiny-qwen2 with ChatML tokens; 64 arithmetic tasks asking for a bare number; split 1/8"


def build_demo_assets(assets: Path) -> Path:
    """The demo's tiny random model (a tokenizer trained here) and toy dataset, built into ``assets`` once."""
    from loka_api.dataset import build_dataset
    from loka_trainer.tiny import build_tiny_model, write_tasks

    stamp = assets / "recipe.txt"
    if stamp.is_file() and stamp.read_text() == ASSETS_RECIPE:
        return assets
    shutil.rmtree(assets, ignore_errors=True)
    build_tiny_model(assets / "model")
    tasks = write_tasks(assets / "tasks.jsonl", 64, answer="number")
    build_dataset(tasks, assets / "data", validation_fraction=0.125)
    stamp.write_text(ASSETS_RECIPE)
    return assets


def upload_tiny_assets(cluster: LocalCluster, work: Path, prefix: str = "demo") -> None:
    """A tiny random model with a tokenizer trained here, and a toy arithmetic dataset, into MinIO."""
    assets = build_demo_assets(work / "assets")
    s3 = s3_client(cluster)
    for path in sorted((assets / "model").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), S3_BUCKET, f"{prefix}/model/{path.relative_to(assets / 'model').as_posix()}")
    for name in ("train.parquet", "validation.parquet"):
        s3.upload_file(str(assets / "data" / name), S3_BUCKET, f"{prefix}/data/{name}")


def checkpoint_keys(cluster: LocalCluster, manifest: dict[str, Any]) -> list[str]:
    """Every object under the run's checkpoint prefix in MinIO."""
    uri = manifest["spec"]["checkpoints"]["uri"].removeprefix(f"s3://{S3_BUCKET}/").strip("/")
    prefix = "/".join(p for p in (uri, manifest["metadata"]["namespace"], manifest["metadata"]["name"]) if p) + "/"
    s3 = s3_client(cluster)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def delete_previous_run(cluster: LocalCluster, stack: DemoStack, manifest: dict[str, Any]) -> None:
    """Idempotence: a demo run left from before is deleted with its children, checkpoints and work dir."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    cluster.kubectl("-n", namespace, "delete", "trainingrun", name, "--ignore-not-found", "--wait=true",
                    "--timeout=120s")  # fmt: skip
    shutil.rmtree(stack.work_dir / namespace / name, ignore_errors=True)
    keys = checkpoint_keys(cluster, manifest)
    s3 = s3_client(cluster)
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=S3_BUCKET, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


def step_metric(stack: DemoStack, namespace: str, name: str, key: str) -> list[float]:
    """One metric per GRPO step as the trainer logged it (verl's metric names, in the run's metrics file)."""
    metrics = stack.work_dir / namespace / name / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [float(r["data"][key]) for r in records if key in r.get("data", {})]


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], *, low: float = 0.0, high: float = 1.0) -> str:
    """One block character per value on a fixed scale, so a flat curve looks flat."""
    span = (high - low) or 1.0
    return "".join(SPARK[round(min(max((v - low) / span, 0.0), 1.0) * (len(SPARK) - 1))] for v in values)


def get_run(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("-n", namespace, "get", "trainingrun", name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    run: dict[str, Any] = yaml.safe_load(result.stdout)
    return run


def describe(status: dict[str, Any]) -> str:
    phase = status.get("phase") or "Pending"
    progress, metrics, checkpoint = status.get("progress") or {}, status.get("metrics") or {}, status.get("checkpoint")
    parts = [f"{phase:<10}"]
    if progress.get("step") is not None:
        total = progress.get("totalSteps")
        parts.append(f"step {progress['step']}/{total}" if total else f"step {progress['step']}")
        if total:
            done = int(20 * min(progress["step"], total) / total)
            parts.insert(1, "[" + "#" * done + "." * (20 - done) + "]")
    if metrics.get("rewardMean") is not None:
        parts.append(f"reward {metrics['rewardMean']:.3f}")
    if metrics.get("klLoss") is not None:
        parts.append(f"kl {metrics['klLoss']:.4f}")
    if checkpoint and checkpoint.get("step") is not None:
        parts.append(f"checkpoint step {checkpoint['step']}")
    if phase not in ("Running", "Succeeded") and status.get("message"):
        parts.append(f"— {status['message'][:100]}")
    return "  ".join(parts)


def follow(cluster: LocalCluster, namespace: str, name: str, *, timeline: Timeline, timeout: float) -> dict[str, Any]:
    """Print one line each time the run's phase, step, reward or checkpoint changes; return the final status."""
    last_line = ""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = get_run(cluster, namespace, name)
        status = (run or {}).get("status") or {}
        phase = status.get("phase") or "Pending"
        now = time.monotonic()
        timeline.phases.setdefault(phase, now)
        line = describe(status)
        if line != last_line:
            print(f"  [{now - timeline.applied:6.1f}s] {line}", flush=True)
            last_line = line
        if phase in TERMINAL:
            return status
        time.sleep(0.5)
    raise ClusterError(f"the demo run did not finish within {timeout:.0f}s; last status: {describe(status)}")


def run_demo(timeout: float) -> int:
    began = time.monotonic()
    cluster = LocalCluster()
    versions = cluster.versions
    if not all(is_built(c, cluster.go) for c in versions.go_components()):
        print("First run: building the control plane from its Go modules into ~/.cache/loka.")
        print("This takes 20-50 minutes on 2 cores, once; later runs reuse the cache.")
        build_all()
    print("1/5 control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK, KubeRay, Kueue, MinIO)")
    cluster.up()
    print("2/5 Ray head, dashboard router, loka-operator and pod shim")
    stack = DemoStack(cluster)
    stack.up()

    manifest = demo_manifest()
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    print(f"3/5 namespace {namespace}, S3 credentials Secret, ClusterQueue; tiny model and dataset into MinIO")
    prepare_namespace(cluster, namespace, cluster_queue=manifest["spec"]["queue"]["clusterQueue"])
    delete_previous_run(cluster, stack, manifest)
    upload_tiny_assets(cluster, stack.layout.root)

    print(f"4/5 kubectl apply -f {DEMO_RUN.relative_to(REPO_ROOT)}")
    timeline = Timeline(applied=time.monotonic())
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    final = follow(cluster, namespace, name, timeline=timeline, timeout=timeout)

    print("5/5 summary")
    progress = final.get("progress") or {}
    print(f"  phase              {final.get('phase')}  (attempt {final.get('attempt')})")
    if final.get("phase") != "Succeeded":
        print(f"  message            {final.get('message')}")
    print(f"  steps              {progress.get('step')}/{progress.get('totalSteps')}")
    rewards = step_metric(stack, namespace, name, "critic/score/mean")
    if rewards:
        print(f"  reward mean        {rewards[0]:.3f} at step 1 → {rewards[-1]:.3f} at step {len(rewards)}")
        print(f"  reward per step    {sparkline(rewards)}  (0 ▁ … █ 1)")
    seconds_per_step = step_metric(stack, namespace, name, "perf/time_per_step")
    if seconds_per_step:
        mean = sum(seconds_per_step) / len(seconds_per_step)
        rate = f"{60 / mean:.0f} steps/min on CPU"
        print(f"  GRPO step time     {mean:.2f} s mean over {len(seconds_per_step)} steps ({rate})")
    for phase in ("Queued", "Starting", "Running", "Succeeded", "Failed"):
        seconds = timeline.seconds_to(phase)
        if seconds is not None:
            print(f"  apply → {phase:<10} {seconds:6.1f} s")
    print("  checkpoints in MinIO:")
    for key in checkpoint_keys(cluster, manifest):
        if key.endswith(("loka-manifest.json", "/latest")):
            print(f"    s3://{S3_BUCKET}/{key}")
    print(f"  make demo wall time {time.monotonic() - began:6.1f} s")
    print("\nLook further:")
    print("  source .cluster/env")
    print(f"  kubectl -n {namespace} get trainingruns")
    print(f"  kubectl -n {namespace} describe trainingrun {name}")
    print(f"  Ray dashboard: {stack.dashboard_url}   (operator log: {stack.layout.logs / 'loka-operator.log'})")
    print("  make demo-down    # stops the Ray head, router, operator and shim;  make cluster-down  # the rest")
    return 0 if final.get("phase") == "Succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--down", action="store_true", help="stop what the demo started")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run to finish")
    args = parser.parse_args(argv)
    try:
        if args.down:
            DemoStack(LocalCluster()).down()
            return 0
        return run_demo(args.timeout)
    except ClusterError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
