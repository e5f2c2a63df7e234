"""`make demo-cycle`: one RewardCycle on CPU, one full iteration and the next burst, chained by the resources alone.

The demo applies `examples/cycle/reward-cycle-demo.yaml` (its endpoints made local) and only stands in for what this
machine lacks:

- the judges: `localcluster.judge_server` on a local port (deterministic OpenAI-API judges `digits` and `length`);
- the evaluator's pod: KWOK completes a Job's pod at once without running it, so the Evaluations queue on a
  ClusterQueue the demo holds (Kueue's `stopPolicy: Hold`); once the operator made an Evaluation's Job, the demo
  runs `loka-trainer evaluate` as that pod would (its ServiceAccount's token, its Evaluation's name, MinIO), then
  lets Kueue admit the Job;
- the reward model's server: the operator would serve it for the next burst (`rewardModel.fromRun`), but KWOK runs
  no server pod, so the demo's cycle gives `reward.rewardModel.endpoint` instead, and once a reward model run
  succeeded the demo serves its final checkpoint there with `loka_trainer.rm_server`.

Everything else is the operator's: it creates each stage (TrainingRun, Evaluation, TrainingRun) owned by the cycle,
each waits for the one before by its own field (rollouts.fromRun, data.fromEvaluation, model.fromRun), and the next
burst is created once the reward model it is rewarded by succeeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localcluster.controlplane import REPO_ROOT, S3_BUCKET, ClusterError, LocalCluster
from localcluster.judge_server import JudgeServer
from localcluster.operator_process import free_port
from localcluster.ports import LOCALHOST
from localcluster.stack import DemoStack
from loka_api import kinds
from loka_api.contract import ENV_EVALUATION_NAME, ENV_EVALUATION_NAMESPACE
from loka_api.cycle import STAGE_FAILED, STAGE_SUCCEEDED, CyclePhase, RewardCycle, Stage, StageStatus
from loka_api.storage import S3Uri
from loka_client import Client, NotFoundError
from loka_client.describe import describe_line, evaluation_line

CYCLE = REPO_ROOT / "examples" / "cycle" / "reward-cycle-demo.yaml"
EVALUATION_QUEUE = "loka-demo-evals"  # the cycle's evaluation.queue.clusterQueue
JSON = dict[str, Any]


def cycle_manifest(*, storage: str, judge: str, reward_model: str) -> JSON:
    """The example cycle with this machine's MinIO, judge server and reward model server."""
    body: JSON = yaml.safe_load(CYCLE.read_text())
    spec = body["spec"]
    for template in (spec["rl"], spec["evaluation"], spec["rewardModel"]):
        template["storage"]["endpoint"] = storage
    for judge_spec in spec["evaluation"]["judges"]:
        judge_spec["endpoint"] = judge
    spec["reward"]["rewardModel"]["endpoint"] = reward_model
    return body


def hold_evaluations(cluster: LocalCluster, *, hold: bool) -> None:
    """The Evaluations' ClusterQueue: held (Kueue admits nothing new) until the demo ran the evaluator."""
    queue = {
        "apiVersion": kinds.CLUSTER_QUEUE.api_version,
        "kind": kinds.CLUSTER_QUEUE.kind,
        "metadata": {"name": EVALUATION_QUEUE},
        "spec": {
            "namespaceSelector": {},
            "stopPolicy": "Hold" if hold else "None",
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory"],
                    "flavors": [{"name": "default", "resources": [
                        {"name": "cpu", "nominalQuota": "2"}, {"name": "memory", "nominalQuota": "4Gi"}]}],
                }
            ],
        },
    }  # fmt: skip
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(queue))


def release_one(cluster: LocalCluster, client: Client, evaluation: str, timeout: float = 120) -> None:
    """Let Kueue admit the Evaluation's Job (KWOK then completes its pod), and hold the queue again once it ended."""
    hold_evaluations(cluster, hold=False)
    deadline = time.monotonic() + timeout
    while client.evaluations.get(evaluation).phase.value not in (STAGE_SUCCEEDED, STAGE_FAILED):
        if time.monotonic() > deadline:
            raise ClusterError(f"Evaluation {evaluation} did not end within {timeout:.0f}s of its Job's admission")
        time.sleep(0.5)
    hold_evaluations(cluster, hold=True)


def token_kubeconfig(cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig holding a token of ``account`` (TokenRequest): what the evaluator's pod would mount."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    with cluster.api_client() as api:
        granted = client.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, request).status
    if granted is None:
        raise ClusterError(f"no token for ServiceAccount {namespace}/{account}")
    token = granted.token
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": namespace}}],
        "current-context": account,
    }))  # fmt: skip
    path.chmod(0o600)
    return path


def run_evaluator(cluster: LocalCluster, namespace: str, name: str, work: Path) -> None:
    """`loka-trainer evaluate` as the Evaluation's pod runs it: its own identity, MinIO, its Evaluation's name."""
    kubeconfig = token_kubeconfig(cluster, namespace, f"loka-eval-{name}", work / f"{name}.kubeconfig")
    env = {**os.environ, **cluster.env, ENV_EVALUATION_NAME: name, ENV_EVALUATION_NAMESPACE: namespace}
    env.pop("KUBECONFIG", None)
    command = [str(Path(sys.executable).parent / "loka-trainer"), "evaluate", "--kubeconfig", str(kubeconfig)]
    with (work / f"{name}.log").open("w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=300)
    if done.returncode != 0:
        raise ClusterError(f"the evaluator of {name} exited {done.returncode}: see {work / f'{name}.log'}")


@dataclass
class RewardModelServer:
    """`loka_trainer.rm_server` serving one reward model run's final checkpoint (the one the next burst asks)."""

    port: int
    log: Path
    serving: str | None = None  # the checkpoint URI
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def serve(self, cluster: LocalCluster, checkpoint: str, timeout: float = 120) -> None:
        self.stop()
        env = {**os.environ, **cluster.env}
        command = [sys.executable, "-m", "loka_trainer.rm_server", "--model", checkpoint,
                   "--host", LOCALHOST, "--port", str(self.port)]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.serving = checkpoint
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"the reward model server exited {self.process.returncode}: see {self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2):
                return
            time.sleep(0.5)
        raise ClusterError(f"the reward model server did not answer within {timeout:.0f}s: see {self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


@dataclass
class Follower:
    """What the demo saw of the cycle and its stages, printed as it changes."""

    applied: float
    lines: dict[str, str] = field(default_factory=dict)
    evaluated: set[str] = field(default_factory=set)

    def say(self, who: str, line: str) -> None:
        if self.lines.get(who) != line:
            print(f"  [{time.monotonic() - self.applied:6.1f}s] {who:<19} {line}", flush=True)
            self.lines[who] = line


def stage_line(client: Client, stage: StageStatus) -> tuple[str | None, str]:
    """(phase, one line) of a stage as its own status says it."""
    with contextlib.suppress(NotFoundError):
        if stage.stage is Stage.EVALUATION:
            evaluation = client.evaluations.get(stage.name).status
            return (evaluation.phase.value if evaluation.phase else None), evaluation_line(evaluation)
        status = client.get(stage.name).status
        return (status.phase.value if status.phase else None), describe_line(status)
    return None, "not created yet"


def follow_cycle(
    cluster: LocalCluster, client: Client, name: str, *, rm: RewardModelServer, work: Path, timeout: float
) -> RewardCycle:
    """Print the cycle and each stage as they change; run the evaluator and serve each reward model as they are due;
    return the cycle once it ended."""
    follower = Follower(applied=time.monotonic())
    deadline = time.monotonic() + timeout
    namespace = client.namespace
    while time.monotonic() < deadline:
        cycle = client.cycles.get(name)
        follower.say("cycle", f"{cycle.status.phase or 'Pending'}: {cycle.status.message or 'observed soon'}")
        for row in cycle.status.iterations:
            for stage in row.stages:
                phase, line = stage_line(client, stage)
                follower.say(stage.name, line)
                if stage.stage is Stage.EVALUATION and phase == "Queued" and stage.name not in follower.evaluated:
                    follower.say(stage.name, "the demo runs its evaluator as the Job's pod would, then releases it")
                    run_evaluator(cluster, namespace, stage.name, work)
                    follower.evaluated.add(stage.name)
                    release_one(cluster, client, stage.name)
                if stage.stage is Stage.REWARD_MODEL and phase == STAGE_SUCCEEDED:
                    checkpoint = client.get(stage.name).status.checkpoint
                    if checkpoint is not None and checkpoint.uri and rm.serving != checkpoint.uri:
                        follower.say("reward model server", f"serving {stage.name}'s {checkpoint.uri} at {rm.url}")
                        rm.serve(cluster, checkpoint.uri)
        if cycle.status.phase in (CyclePhase.SUCCEEDED, CyclePhase.FAILED):
            return cycle
        time.sleep(0.5)
    raise ClusterError(f"the cycle did not end within {timeout:.0f}s; last: {follower.lines.get('cycle')}")


def _metric_means(stack: DemoStack, namespace: str, run: str, key: str) -> str:
    from localcluster.demo import step_metric

    values = step_metric(stack, namespace, run, key)
    return f"{values[0]:.3f} at step 1 → {values[-1]:.3f} at step {len(values)}" if values else "not logged"


def summarize_cycle(client: Client, stack: DemoStack, cycle: RewardCycle, rm: RewardModelServer) -> None:
    """Each stage's outcome, and the field that links it to the one before."""
    namespace, spec = client.namespace, cycle.spec
    print(f"  cycle {cycle.metadata.name}: {cycle.status.phase}, {cycle.status.message}")
    for row in cycle.status.iterations:
        print(f"  iteration {row.iteration} of {spec.iterations}")
        for stage in row.stages:
            if stage.stage is Stage.EVALUATION:
                ev = client.evaluations.get(stage.name)
                judges = ", ".join(
                    f"{j.name} parse {j.parse_rate:.2f}" for j in ev.status.judges if j.parse_rate is not None
                )
                print(f"    Evaluation {stage.name}  {ev.status.phase}")
                print(
                    f"      ← rollouts.fromRun {ev.spec.rollouts.from_run}: {ev.status.rollouts_uri}"
                    f" (steps {ev.status.steps})"
                )
                print(
                    f"      {ev.status.samples_judged} of {ev.status.samples} trajectories judged ({judges}), "
                    f"agreement {ev.status.agreement or 0:.2f}, {ev.status.preferences} preference pairs"
                )
                print(f"      → {ev.status.preferences_uri}")
                continue
            run = client.get(stage.name)
            status, run_spec = run.status, run.spec
            steps = f"{status.progress.step}/{status.progress.total_steps}" if status.progress else "?"
            print(f"    TrainingRun {stage.name} ({run_spec.algorithm})  {status.phase}, {steps} steps")
            if status.source is not None:
                print(f"      ← model.fromRun {status.source.run}: its step {status.source.step} ({status.source.uri})")
            if status.train_data is not None:
                print(f"      ← data.fromEvaluation {status.train_data.evaluation}: {status.train_data.uri}")
            if stage.stage is Stage.RL:
                reward = run_spec.reward
                components = [c.name for c in reward.components or []] if reward is not None else []
                named = " + ".join(components) or (reward.function if reward is not None else None) or "-"
                print(f"      reward {named}: score {_metric_means(stack, namespace, stage.name, 'critic/score/mean')}")
                if spec.reward.name in components:
                    print(
                        f"      reward model component {spec.reward.name!r} (asked at {rm.url}): "
                        f"{_metric_means(stack, namespace, stage.name, f'reward/{spec.reward.name}/mean')}"
                    )
                if status.rollouts is not None:
                    print(f"      kept rollouts up to step {status.rollouts.step}: {status.rollouts.uri}")
            elif status.metrics is not None and status.metrics.pairwise_accuracy is not None:
                print(f"      pairwise accuracy on held-out pairs {status.metrics.pairwise_accuracy:.2f}")
            if status.checkpoint is not None:
                print(f"      → checkpoint step {status.checkpoint.step}: {status.checkpoint.uri}")


def run_cycle_demo(cluster: LocalCluster, stack: DemoStack, *, timeout: float, began: float) -> int:
    from localcluster.demo import demo_client, object_store, prepare_namespace, upload_tiny_assets

    work = stack.layout.root / "cycle"
    work.mkdir(parents=True, exist_ok=True)
    judge = JudgeServer().start()
    rm = RewardModelServer(free_port(), stack.layout.logs / "rm-server.log")
    print(f"    judge server (localcluster/judge_server.py) at {judge.url}; reward model server to come at {rm.url}")
    manifest = cycle_manifest(storage=cluster.s3_endpoint, judge=judge.url, reward_model=rm.url)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        print(f"3/5 namespace {namespace}, S3 credentials Secret, ClusterQueues; tiny model and dataset into MinIO")
        prepare_namespace(cluster, namespace, cluster_queue=manifest["spec"]["rl"]["queue"]["clusterQueue"])
        hold_evaluations(cluster, hold=True)
        with demo_client(cluster, namespace) as client, contextlib.suppress(NotFoundError):
            client.cycles.delete(name, wait=True, timeout=180)  # a cycle left from before, and its stages
        output = S3Uri.parse(manifest["spec"]["evaluation"]["output"]["uri"])
        object_store(cluster).delete_prefix(S3Uri(S3_BUCKET, f"{output.key}{name}-"))  # else a re-run skips judging
        for stale in (stack.work_dir / namespace).glob(f"{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        upload_tiny_assets(cluster, stack.layout.root)

        print(f"4/5 submit {CYCLE.relative_to(REPO_ROOT)} (one RewardCycle; the operator creates its stages)")
        with demo_client(cluster, namespace) as client:
            client.cycles.submit(manifest)
            final = follow_cycle(cluster, client, name, rm=rm, work=work, timeout=timeout)
            print("5/5 summary")
            summarize_cycle(client, stack, final, rm)
    finally:
        rm.stop()
        judge.stop()
    print(f"  make demo-cycle wall time {time.monotonic() - began:6.1f} s")
    print("\nLook further:")
    print("  source .cluster/env")
    print(f"  kubectl -n {namespace} get rewardcycles -o wide")
    print(f"  kubectl -n {namespace} get trainingruns,evaluations -l loka.dev/cycle={name}")
    print(f"  evaluator logs: {work}   reward model server log: {rm.log}")
    print("  make demo-down    # stops the Ray head, router, operator and shim;  make cluster-down  # the rest")
    return 0 if final.status.phase == CyclePhase.SUCCEEDED else 1
