"""`make demo`: a real TrainingRun end to end on this machine.

Starts the local control plane (or reuses it), a real Ray head, the dashboard router, the
operator and the pod shim; builds a tiny model and dataset and puts them in MinIO; applies
`examples/demo-run.yaml` and follows it live through Queued → Starting → Running → Succeeded;
then prints a summary. Nothing is faked but the kubelet (KWOK, plus the pod shim).
`--pipeline` (`make demo-pipeline`) applies `examples/pipeline/sft-then-grpo-demo.yaml` instead:
an SFT run, and a GRPO run that waits for it and starts from its final checkpoint.

    python -m localcluster.demo             # run the demo (idempotent: a previous demo run is replaced)
    python -m localcluster.demo --pipeline  # SFT, then GRPO from the SFT run's weights
    python -m localcluster.demo --down      # stop what the demo started (the control plane stays up)
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
PIPELINE = REPO_ROOT / "examples" / "pipeline" / "sft-then-grpo-demo.yaml"
TERMINAL = {"Succeeded", "Failed"}
# The toy task's held-out share, the same for the RL prompts and the SFT demonstrations.
VALIDATION_FRACTION = 0.125


@dataclass
class Timeline:
    """What the follower saw: when each phase first appeared, and the headline figure (reward or loss) over steps."""

    applied: float
    phases: dict[str, float] = field(default_factory=dict)
    rewards: list[tuple[int, float]] = field(default_factory=list)

    def seconds_to(self, phase: str) -> float | None:
        return self.phases[phase] - self.applied if phase in self.phases else None


def _local_storage(manifest: dict[str, Any]) -> dict[str, Any]:
    # The examples name the default MinIO; a control plane started with LOKA_CLUSTER_PORT_OFFSET has its own.
    manifest["spec"]["storage"]["endpoint"] = f"http://{LOCALHOST}:{PORTS.minio}"
    return manifest


def demo_manifest() -> dict[str, Any]:
    return _local_storage(yaml.safe_load(DEMO_RUN.read_text()))


def pipeline_manifests() -> list[dict[str, Any]]:
    """The pipeline's runs, in the order they train (SFT, then GRPO from it)."""
    return [_local_storage(doc) for doc in yaml.safe_load_all(PIPELINE.read_text()) if isinstance(doc, dict)]


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
ASSETS_RECIPE = (
    "tiny-qwen2 with ChatML tokens; 64 arithmetic tasks asking for a bare number; 64 SFT demonstrations; split 1/8"
)


def build_demo_assets(assets: Path) -> Path:
    """The demo's tiny random model (a tokenizer trained here) and toy dataset (RL prompts under data/, SFT
    demonstrations under sft/), built into ``assets`` once.
    """
    from loka_api.dataset import build_dataset
    from loka_trainer.tiny import build_tiny_model, write_sft_demonstrations, write_tasks

    stamp = assets / "recipe.txt"
    if stamp.is_file() and stamp.read_text() == ASSETS_RECIPE:
        return assets
    shutil.rmtree(assets, ignore_errors=True)
    build_tiny_model(assets / "model")
    tasks = write_tasks(assets / "tasks.jsonl", 64, answer="number")
    build_dataset(tasks, assets / "data", validation_fraction=VALIDATION_FRACTION)
    write_sft_demonstrations(assets / "sft", 64, validation_fraction=VALIDATION_FRACTION)
    stamp.write_text(ASSETS_RECIPE)
    return assets


def upload_tiny_assets(cluster: LocalCluster, work: Path, prefix: str = "demo") -> None:
    """A tiny random model with a tokenizer trained here, a toy arithmetic dataset (RL prompts under data/, SFT
    demonstrations under sft/), into MinIO.
    """
    assets = build_demo_assets(work / "assets")
    s3 = s3_client(cluster)
    for path in sorted((assets / "model").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), S3_BUCKET, f"{prefix}/model/{path.relative_to(assets / 'model').as_posix()}")
    for folder in ("data", "sft"):
        for name in ("train.parquet", "validation.parquet"):
            s3.upload_file(str(assets / folder / name), S3_BUCKET, f"{prefix}/{folder}/{name}")


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
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.3f}")
    for key, label in (("validationRewardMean", "validation reward"), ("validationLoss", "validation loss")):
        if metrics.get(key) is not None:
            parts.append(f"{label} {metrics[key]:.3f} (step {metrics.get('validationStep')})")
    if checkpoint and checkpoint.get("step") is not None:
        parts.append(f"checkpoint step {checkpoint['step']}")
    if phase not in ("Running", "Succeeded") and status.get("message"):
        parts.append(f"— {status['message'][:100]}")
    return "  ".join(parts)


def follow(
    cluster: LocalCluster, namespace: str, names: list[str], *, timelines: dict[str, Timeline], timeout: float
) -> dict[str, dict[str, Any]]:
    """Print one line each time a run's phase, step, reward, loss or checkpoint changes, until every run ended;
    return their final statuses.
    """
    last_lines: dict[str, str] = {}
    statuses: dict[str, dict[str, Any]] = {name: {} for name in names}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            timeline = timelines[name]
            status = statuses[name] = (get_run(cluster, namespace, name) or {}).get("status") or {}
            phase = status.get("phase") or "Pending"
            now = time.monotonic()
            timeline.phases.setdefault(phase, now)
            step, figure = (status.get("progress") or {}).get("step"), _headline(status)
            if step is not None and figure is not None and (not timeline.rewards or timeline.rewards[-1][0] != step):
                timeline.rewards.append((step, figure))
            line = describe(status)
            if line != last_lines.get(name):
                who = f"{name:<10} " if len(names) > 1 else ""
                print(f"  [{now - timeline.applied:6.1f}s] {who}{line}", flush=True)
                last_lines[name] = line
        if all((statuses[name].get("phase") or "") in TERMINAL for name in names):
            return statuses
        time.sleep(0.5)
    last = "; ".join(f"{name}: {describe(statuses[name])}" for name in names)
    raise ClusterError(f"the demo did not finish within {timeout:.0f}s; last status: {last}")


def _headline(status: dict[str, Any]) -> float | None:
    """The figure a run's summary follows: the reward for RL, the loss for SFT."""
    metrics = status.get("metrics") or {}
    reward = metrics.get("rewardMean")
    return reward if reward is not None else metrics.get("loss")


def run_demo(timeout: float, *, pipeline: bool = False) -> int:
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

    manifests = pipeline_manifests() if pipeline else [demo_manifest()]
    source = PIPELINE if pipeline else DEMO_RUN
    namespace = manifests[0]["metadata"]["namespace"]
    names = [m["metadata"]["name"] for m in manifests]
    print(f"3/5 namespace {namespace}, S3 credentials Secret, ClusterQueue; tiny model and dataset into MinIO")
    prepare_namespace(cluster, namespace, cluster_queue=manifests[0]["spec"]["queue"]["clusterQueue"])
    for manifest in reversed(manifests):  # a run started from another goes first: it must not see its source vanish
        delete_previous_run(cluster, stack, manifest)
    upload_tiny_assets(cluster, stack.layout.root)

    print(f"4/5 kubectl apply -f {source.relative_to(REPO_ROOT)}")
    applied = time.monotonic()
    timelines = {name: Timeline(applied=applied) for name in names}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    finals = follow(cluster, namespace, names, timelines=timelines, timeout=timeout)

    print("5/5 summary")
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        if len(manifests) > 1:
            print(f"  {name} ({manifest['spec'].get('algorithm', 'grpo')})")
        summarize(cluster, stack, manifest, finals[name], timelines[name])
    print(f"  make demo wall time {time.monotonic() - began:6.1f} s")
    print("\nLook further:")
    print("  source .cluster/env")
    print(f"  kubectl -n {namespace} get trainingruns -o wide")
    print(f"  kubectl -n {namespace} describe trainingrun {names[-1]}")
    print(f"  Ray dashboard: {stack.dashboard_url}   (operator log: {stack.layout.logs / 'loka-operator.log'})")
    print("  make demo-down    # stops the Ray head, router, operator and shim;  make cluster-down  # the rest")
    return 0 if all(finals[name].get("phase") == "Succeeded" for name in names) else 1


def summarize(
    cluster: LocalCluster, stack: DemoStack, manifest: dict[str, Any], final: dict[str, Any], timeline: Timeline
) -> None:
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    progress, metrics = final.get("progress") or {}, final.get("metrics") or {}
    print(f"  phase              {final.get('phase')}  (attempt {final.get('attempt')})")
    if final.get("phase") != "Succeeded":
        print(f"  message            {final.get('message')}")
    if final.get("source"):
        source = final["source"]
        print(
            f"  started from       run {source.get('run')} checkpoint step {source.get('step')} ({source.get('uri')})"
        )
    print(f"  steps              {progress.get('step')}/{progress.get('totalSteps')}")
    rewards = step_metric(stack, namespace, name, "critic/score/mean")
    if rewards:
        print(f"  reward mean        {rewards[0]:.3f} at step 1 → {rewards[-1]:.3f} at step {len(rewards)}")
        print(f"  reward per step    {sparkline(rewards)}  (0 ▁ … █ 1)")
    elif timeline.rewards:  # an SFT run: the training loss as status showed it
        (first_step, first), (last_step, last) = timeline.rewards[0], timeline.rewards[-1]
        print(f"  training loss      {first:.3f} at step {first_step} → {last:.3f} at step {last_step}")
    for key, label in (("validationRewardMean", "validation reward"), ("validationLoss", "validation loss")):
        if metrics.get(key) is not None:
            print(f"  {label:<18} {metrics[key]:.3f} at step {metrics.get('validationStep')}")
    seconds_per_step = step_metric(stack, namespace, name, "perf/time_per_step")
    if seconds_per_step:
        mean = sum(seconds_per_step) / len(seconds_per_step)
        rate = f"{60 / mean:.0f} steps/min on CPU"
        kind = "SFT" if metrics.get("loss") is not None else "GRPO"
        print(f"  {kind} step time      {mean:.2f} s mean over {len(seconds_per_step)} steps ({rate})")
    for phase in ("Queued", "Starting", "Running", "Succeeded", "Failed"):
        seconds = timeline.seconds_to(phase)
        if seconds is not None:
            print(f"  apply → {phase:<10} {seconds:6.1f} s")
    print("  checkpoints in MinIO:")
    for key in checkpoint_keys(cluster, manifest):
        if key.endswith(("loka-manifest.json", "/latest")):
            print(f"    s3://{S3_BUCKET}/{key}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--down", action="store_true", help="stop what the demo started")
    parser.add_argument("--pipeline", action="store_true", help="SFT, then GRPO from the SFT run's final checkpoint")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run to finish")
    args = parser.parse_args(argv)
    try:
        if args.down:
            DemoStack(LocalCluster()).down()
            return 0
        return run_demo(args.timeout, pipeline=args.pipeline)
    except ClusterError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
