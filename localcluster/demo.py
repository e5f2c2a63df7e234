"""`make demo`: a real TrainingRun end to end on this machine.

Starts the local control plane (or reuses it), a real Ray head, the dashboard router, the
operator and the pod shim; builds a tiny model and dataset and puts them in MinIO; applies
`examples/demo-run.yaml` and follows it live through Queued → Starting → Running → Succeeded;
then prints a summary. Nothing is faked but the kubelet (KWOK, plus the pod shim).
`--pipeline` (`make demo-pipeline`) applies `examples/pipeline/sft-then-grpo-demo.yaml` instead:
an SFT run, and a GRPO run that waits for it and starts from its final checkpoint. `--agent` (`make demo-agent`)
serves a toy MCP environment and applies `examples/agents/tool-use-demo.yaml`: SFT on tool-use transcripts, then
GRPO from it in the environment (`localcluster/agent_demo.py`). `--cycle` (`make demo-cycle`) applies one RewardCycle:
GRPO, an Evaluation of its rollouts by local judges, a reward model on their preferences, and the next GRPO burst
rewarded by it (`localcluster/cycle_demo.py`).

    python -m localcluster.demo             # run the demo (idempotent: a previous demo run is replaced)
    python -m localcluster.demo --pipeline  # SFT, then GRPO from the SFT run's weights
    python -m localcluster.demo --agent     # SFT on tool-use transcripts, then GRPO in an MCP environment
    python -m localcluster.demo --cycle     # RL, Evaluation, reward model, next RL: one RewardCycle
    python -m localcluster.demo --down      # stop what the demo started (the control plane stays up)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster.build import build_all, is_built
from localcluster.controlplane import PORTS, REPO_ROOT, S3_BUCKET, ClusterError, LocalCluster
from localcluster.ports import LOCALHOST
from localcluster.stack import DemoStack
from loka_api import Metrics, Progress, TrainingRunStatus, kinds
from loka_api.phases import TERMINAL
from loka_api.storage import ObjectStore, S3Uri
from loka_client import Client, LokaError, RunNotFoundError
from loka_client.describe import describe_line, headline

DEMO_RUN = REPO_ROOT / "examples" / "demo-run.yaml"
PIPELINE = REPO_ROOT / "examples" / "pipeline" / "sft-then-grpo-demo.yaml"
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


def object_store(cluster: LocalCluster) -> ObjectStore:
    """The local MinIO through the one S3 wrapper, with the control plane's credentials."""
    return ObjectStore(settings=cluster.env)


def s3_client(cluster: LocalCluster) -> Any:
    """The local MinIO's boto3 client (the tests read objects with it)."""
    return object_store(cluster).client


def demo_client(cluster: LocalCluster, namespace: str) -> Client:
    return Client(namespace, kubeconfig=cluster.kubeconfig, s3_settings=cluster.env)


def prepare_namespace(cluster: LocalCluster, namespace: str, *, cluster_queue: str, cpu: int = 8) -> None:
    """Namespace, the S3 credentials Secret, and a ClusterQueue (the operator makes the LocalQueue)."""
    env = cluster.env
    cluster.kubectl("create", "namespace", namespace, check=False)
    # `data`, not `stringData`: the operator then sees the key names in the Secret's metadata, no values.
    secret = {
        "apiVersion": kinds.SECRET.api_version,
        "kind": kinds.SECRET.kind,
        "metadata": {"name": "loka-s3", "namespace": namespace},
        "data": {key: base64.b64encode(env[key].encode()).decode()
                 for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }  # fmt: skip
    flavor = {"apiVersion": kinds.RESOURCE_FLAVOR.api_version, "kind": kinds.RESOURCE_FLAVOR.kind,
              "metadata": {"name": "default"}}  # fmt: skip
    queue = {
        "apiVersion": kinds.CLUSTER_QUEUE.api_version,
        "kind": kinds.CLUSTER_QUEUE.kind,
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
    "tiny-qwen2 with ChatML tokens; 64 arithmetic tasks asking for a bare number; the same 64 asking for "
    "<think>/<answer> tags, and their 64 SFT demonstrations; split 1/8"
)


def build_demo_assets(assets: Path) -> Path:
    """The demo's tiny random model (a tokenizer trained here) and toy datasets (see write_demo_datasets), built
    into ``assets`` once.
    """
    from loka_trainer.tiny import build_tiny_model

    stamp = assets / "recipe.txt"
    if stamp.is_file() and stamp.read_text() == ASSETS_RECIPE:
        return assets
    shutil.rmtree(assets, ignore_errors=True)
    build_tiny_model(assets / "model")
    write_demo_datasets(assets)
    stamp.write_text(ASSETS_RECIPE)
    return assets


def write_demo_datasets(assets: Path) -> None:
    """RL prompts asking for a bare number under data/ (`make demo`); RL prompts asking for <think>/<answer> tags
    under tagged/ and the worked answers to the same prompts under sft/ (`make demo-pipeline`: GRPO asks what SFT
    taught). Each as train.parquet and validation.parquet.
    """
    from loka_api.dataset import build_dataset
    from loka_trainer.tiny import write_sft_demonstrations, write_tasks

    tasks = write_tasks(assets / "tasks.jsonl", 64, answer="number")
    build_dataset(tasks, assets / "data", validation_fraction=VALIDATION_FRACTION)
    tagged = write_tasks(assets / "tagged-tasks.jsonl", 64, answer="tags")
    build_dataset(tagged, assets / "tagged", validation_fraction=VALIDATION_FRACTION)
    write_sft_demonstrations(assets / "sft", 64, validation_fraction=VALIDATION_FRACTION)


def upload_tiny_assets(cluster: LocalCluster, work: Path, prefix: str = "demo") -> None:
    """A tiny random model with a tokenizer trained here and the toy arithmetic datasets (data/, tagged/, sft/: see
    build_demo_assets), into MinIO.
    """
    assets = build_demo_assets(work / "assets")
    root = S3Uri(S3_BUCKET, prefix)
    model = [(p, root.join("model", p.relative_to(assets / "model").as_posix()))
             for p in sorted((assets / "model").rglob("*")) if p.is_file()]  # fmt: skip
    data = [(assets / folder / name, root.join(folder, name))
            for folder in ("data", "tagged", "sft") for name in ("train.parquet", "validation.parquet")]  # fmt: skip
    object_store(cluster).upload_files([*model, *data])


def upload_agent_assets(cluster: LocalCluster, work: Path, url: str, prefix: str = "demo") -> None:
    """The agent demo's base model (model/), tool-use transcripts (sft/) and tasks (tasks/), into MinIO under
    ``prefix``/agent/."""
    from localcluster.agent_demo import build_agent_assets

    assets = build_agent_assets(work / "agent-assets", url)
    root = S3Uri(S3_BUCKET, prefix)
    files = [(path, root.join("agent", path.relative_to(assets).as_posix()))
             for folder in ("model", "sft", "tasks") for path in sorted((assets / folder).rglob("*"))
             if path.is_file()]  # fmt: skip
    object_store(cluster).upload_files(files)


def checkpoint_keys(cluster: LocalCluster, manifest: dict[str, Any]) -> list[str]:
    """Every object under the run's checkpoint prefix in MinIO."""
    uri = manifest["spec"]["checkpoints"]["uri"].removeprefix(f"s3://{S3_BUCKET}/").strip("/")
    prefix = "/".join(p for p in (uri, manifest["metadata"]["namespace"], manifest["metadata"]["name"]) if p) + "/"
    return [stored.uri.key for stored in object_store(cluster).list_objects(S3Uri(S3_BUCKET, prefix))]


def delete_previous_run(cluster: LocalCluster, stack: DemoStack, manifest: dict[str, Any]) -> None:
    """Idempotence: a demo run left from before is deleted with its children, checkpoints and work dir."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    with demo_client(cluster, namespace) as client, contextlib.suppress(RunNotFoundError):
        client.delete(name, wait=True, timeout=120)
    shutil.rmtree(stack.work_dir / namespace / name, ignore_errors=True)
    uri = manifest["spec"]["checkpoints"]["uri"].removeprefix(f"s3://{S3_BUCKET}/").strip("/")
    prefix = "/".join(p for p in (uri, namespace, name) if p)
    object_store(cluster).delete_prefix(S3Uri(S3_BUCKET, prefix))


def validation_rewards(stack: DemoStack, namespace: str, name: str) -> list[tuple[int, float]]:
    """(step, mean validation reward) as the trainer logged them: step 0 is the weights the run started from."""
    metrics = stack.work_dir / namespace / name / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(value)) for r in records for key, value in r.get("data", {}).items()
            if key.startswith("val-core/") and "/reward/mean@" in key]  # fmt: skip


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


def follow(
    client: Client,
    names: list[str],
    *,
    timelines: dict[str, Timeline],
    timeout: float,
    alive: Callable[[], None] = lambda: None,
) -> dict[str, TrainingRunStatus]:
    """Print one line each time a run's phase, step, reward, loss or checkpoint changes, until every run ended;
    return their final statuses. ``alive`` raises when what the runs need has died (the demo's Ray head): the
    runs would otherwise stay Running until the timeout.
    """
    last_lines: dict[str, str] = {}
    statuses = {name: TrainingRunStatus() for name in names}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            timeline = timelines[name]
            with contextlib.suppress(RunNotFoundError):
                statuses[name] = client.get(name).status
            status = statuses[name]
            now = time.monotonic()
            timeline.phases.setdefault(status.phase or "Pending", now)
            step, figure = (status.progress.step if status.progress else None), headline(status)
            if step is not None and figure is not None and (not timeline.rewards or timeline.rewards[-1][0] != step):
                timeline.rewards.append((step, figure))
            line = describe_line(status)
            if line != last_lines.get(name):
                who = f"{name:<10} " if len(names) > 1 else ""
                print(f"  [{now - timeline.applied:6.1f}s] {who}{line}", flush=True)
                last_lines[name] = line
        if all(statuses[name].phase in TERMINAL for name in names):
            return statuses
        alive()
        time.sleep(0.5)
    last = "; ".join(f"{name}: {describe_line(statuses[name])}" for name in names)
    raise ClusterError(f"the demo did not finish within {timeout:.0f}s; last status: {last}")


def run_demo(
    timeout: float, *, pipeline: bool = False, agent: bool = False, cycle: bool = False, keep: bool = False
) -> int:
    """Run one demo; stop the Ray head, router, operator and shim afterwards if it started them, unless ``keep``
    (`make demo` keeps them for the README's next steps; they hold the Ray ports of this port offset)."""
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
    started = not stack.is_up()
    stack.up()
    try:
        return _run(cluster, stack, timeout, began=began, pipeline=pipeline, agent=agent, cycle=cycle)
    finally:
        if started and not keep:
            print("Stopping the Ray head, router, operator and pod shim it started (--keep leaves them up)")
            stack.down()


def _run(
    cluster: LocalCluster, stack: DemoStack, timeout: float, *, began: float, pipeline: bool, agent: bool, cycle: bool
) -> int:
    if cycle:
        from localcluster.cycle_demo import run_cycle_demo

        return run_cycle_demo(cluster, stack, timeout=timeout, began=began)

    environment = None
    if agent:
        from localcluster.agent_demo import AGENT_PIPELINE, agent_manifests, start_toy_environment
        from localcluster.operator_process import free_port

        environment = start_toy_environment(free_port(), stack.layout.logs / "mcp-env.log")
        print(f"    toy MCP environment (localcluster/mcp_env.py) at {environment.url}")
        manifests, source = agent_manifests(environment.url, storage_endpoint=cluster.s3_endpoint), AGENT_PIPELINE
    else:
        manifests = pipeline_manifests() if pipeline else [demo_manifest()]
        source = PIPELINE if pipeline else DEMO_RUN
    try:
        return _submit_and_follow(
            cluster, stack, manifests, source=source, timeout=timeout, began=began, environment=environment
        )
    finally:
        if environment is not None:
            environment.stop()


def _submit_and_follow(
    cluster: LocalCluster,
    stack: DemoStack,
    manifests: list[dict[str, Any]],
    *,
    source: Path,
    timeout: float,
    began: float,
    environment: Any,
) -> int:
    namespace = manifests[0]["metadata"]["namespace"]
    names = [m["metadata"]["name"] for m in manifests]
    print(f"3/5 namespace {namespace}, S3 credentials Secret, ClusterQueue; tiny model and dataset into MinIO")
    prepare_namespace(cluster, namespace, cluster_queue=manifests[0]["spec"]["queue"]["clusterQueue"])
    for manifest in reversed(manifests):  # a run started from another goes first: it must not see its source vanish
        delete_previous_run(cluster, stack, manifest)
    upload_tiny_assets(cluster, stack.layout.root)
    if environment is not None:
        upload_agent_assets(cluster, stack.layout.root, environment.url)

    print(f"4/5 submit {source.relative_to(REPO_ROOT)} (server-side apply, as loka submit does)")
    applied = time.monotonic()
    timelines = {name: Timeline(applied=applied) for name in names}
    with demo_client(cluster, namespace) as client:
        for manifest in manifests:
            client.submit(manifest)
        finals = follow(client, names, timelines=timelines, timeout=timeout, alive=stack.check_alive)

    print("5/5 summary")
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        if len(manifests) > 1:
            print(f"  {name} ({manifest['spec'].get('algorithm', 'grpo')})")
        with demo_client(cluster, namespace) as client:
            summarize(client, stack, manifest, finals[name], timelines[name])
    if environment is not None and all(finals[name].phase == "Succeeded" for name in names):
        from localcluster.agent_demo import summarize_agent

        with demo_client(cluster, namespace) as client:
            summarize_agent(client, stack, manifests, environment)
    print(f"  make demo wall time {time.monotonic() - began:6.1f} s")
    print("\nLook further:")
    print("  source .cluster/env")
    print(f"  kubectl -n {namespace} get trainingruns -o wide")
    print(f"  kubectl -n {namespace} describe trainingrun {names[-1]}")
    print(f"  operator log: {stack.layout.logs / 'loka-operator.log'}")
    print(f"  Ray dashboard: {stack.dashboard_url}   (with --keep: then make demo-down stops the Ray head, router,")
    print("  operator and shim;  make cluster-down  # the rest)")
    return 0 if all(finals[name].phase == "Succeeded" for name in names) else 1


def summarize(
    client: Client, stack: DemoStack, manifest: dict[str, Any], final: TrainingRunStatus, timeline: Timeline
) -> None:
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    progress, metrics = final.progress or Progress(), final.metrics or Metrics()
    print(f"  phase              {final.phase}  (attempt {final.attempt})")
    if final.phase != "Succeeded":
        print(f"  message            {final.message}")
    if final.source is not None:
        source = final.source
        print(f"  started from       run {source.run} checkpoint step {source.step} ({source.uri})")
    print(f"  steps              {progress.step}/{progress.total_steps}")
    rewards = step_metric(stack, namespace, name, "critic/score/mean")
    if rewards:
        print(f"  reward mean        {rewards[0]:.3f} at step 1 → {rewards[-1]:.3f} at step {len(rewards)}")
        print(f"  reward per step    {sparkline(rewards)}  (0 ▁ … █ 1)")
    validated = validation_rewards(stack, namespace, name)
    if len(validated) > 1:  # held-out prompts: before the first step (the weights it started from), then after
        (first_step, first), (last_step, last) = validated[0], validated[-1]
        print(f"  held-out reward    {first:.3f} at step {first_step} → {last:.3f} at step {last_step}")
    elif timeline.rewards:  # an SFT run: the training loss as status showed it
        (first_step, first), (last_step, last) = timeline.rewards[0], timeline.rewards[-1]
        print(f"  training loss      {first:.3f} at step {first_step} → {last:.3f} at step {last_step}")
    for value, label in ((metrics.validation_reward_mean, "validation reward"), (metrics.validation_loss,
                                                                                 "validation loss")):  # fmt: skip
        if value is not None:
            print(f"  {label:<18} {value:.3f} at step {metrics.validation_step}")
    seconds_per_step = step_metric(stack, namespace, name, "perf/time_per_step")
    if seconds_per_step:
        mean = sum(seconds_per_step) / len(seconds_per_step)
        rate = f"{60 / mean:.0f} steps/min on CPU"
        kind = "SFT" if metrics.loss is not None else "GRPO"
        print(f"  {kind} step time      {mean:.2f} s mean over {len(seconds_per_step)} steps ({rate})")
    for phase in ("Queued", "Starting", "Running", "Succeeded", "Failed"):
        seconds = timeline.seconds_to(phase)
        if seconds is not None:
            print(f"  apply → {phase:<10} {seconds:6.1f} s")
    print("  complete checkpoints in MinIO (loka checkpoints):")
    try:
        for checkpoint in client.checkpoints(name):
            print(f"    step {checkpoint.step:<4} {checkpoint.uri}{'  (latest)' if checkpoint.latest else ''}")
    except LokaError as error:
        print(f"    cannot list them: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--down", action="store_true", help="stop what the demo started")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction,
                        help="leave the Ray head, router, operator and shim up (default: but for --agent)")  # fmt: skip
    parser.add_argument("--pipeline", action="store_true", help="SFT, then GRPO from the SFT run's final checkpoint")
    parser.add_argument("--agent", action="store_true", help="SFT on tool-use transcripts, then GRPO in an MCP env")
    parser.add_argument("--cycle", action="store_true", help="RL, Evaluation, reward model, next RL: a RewardCycle")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run to finish")
    args = parser.parse_args(argv)
    try:
        if args.down:
            DemoStack(LocalCluster()).down()
            return 0
        keep = args.keep if args.keep is not None else not args.agent
        return run_demo(args.timeout, pipeline=args.pipeline, agent=args.agent, cycle=args.cycle, keep=keep)
    except ClusterError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
