"""TrainingRuns in each state, with the status the operator's own calculator writes for it (plus the
progress, metrics and checkpoint the trainer adds), for the ArgoCD health check.

``python -m tests.deploy.health_scenarios`` rewrites gitops/argocd/health/loka.dev/TrainingRun/testdata/
from these, so the check's test data is what the operator really writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from loka_api import CheckpointStatus, Metrics, Progress, TrainingRunStatus
from loka_operator.status import Observed, Problem, calculate_status
from tests.deploy.gitops import GITOPS

TESTDATA = GITOPS / "argocd" / "health" / "loka.dev" / "TrainingRun" / "testdata"
T0 = datetime(2026, 11, 20, 9, 12, 3, tzinfo=UTC)
RUN = yaml.safe_load((GITOPS / "base" / "runs" / "qwen-gsm8k.yaml").read_text())
Manifest = dict[str, Any]


def _rayjob(deployment: str, job_status: str = "", **status: Any) -> Manifest:
    return {
        "metadata": {"name": "qwen-gsm8k", "uid": "5d1c0c3e-rj"},
        "status": {
            "jobDeploymentStatus": deployment,
            "jobStatus": job_status,
            "rayClusterName": "qwen-gsm8k-7xk2p",
            "dashboardURL": "qwen-gsm8k-7xk2p-head-svc.loka.svc.cluster.local:8265",
            **status,
        },
    }


def _workload(*conditions: tuple[str, str, str, str], active: bool = True) -> Manifest:
    return {
        "metadata": {"name": "rayjob-qwen-gsm8k-3b7e1"},
        "spec": {"active": active},
        "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]},
    }


NO_QUOTA = _workload(
    (
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set head: insufficient unused quota for nvidia.com/gpu in flavor "
        "nvidia-gpu, 8 more needed",
    )
)
ADMITTED = _workload(
    ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
    ("Admitted", "True", "Admitted", "The workload is admitted"),
)
PREEMPTED = _workload(
    ("QuotaReserved", "False", "Preempted", "Preempted to accommodate a workload (UID: 9f2e) due to prioritization"),
    ("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: 9f2e) due to prioritization"),
    ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: 9f2e) due to prioritization"),
)
ENTRYPOINT_FAILED = "Job entrypoint command failed with exit code 1"
NAME_CONFLICT = Problem(
    "NameConflict",
    "a RayJob named 'qwen-gsm8k' already exists and is not owned by this run; delete it or rename the run",
)
MISSING_SECRET = Problem("SecretMissing", "waiting for Secret 'loka-secrets' has no key 'hf-token' in namespace 'loka'")
INVALID = Problem(
    "InvalidBatchShape",
    "spec.training.miniBatchSize (256) * samplesPerPrompt (5) = 1280 trajectories cannot be split evenly over "
    "48 GPUs (resources.workers * resources.gpusPerWorker); choose a multiple",
)


def _trainer_reports(status: TrainingRunStatus, step: int, reward: float) -> None:
    """What the trainer's status reporter adds while it trains."""
    status.progress = Progress.model_validate({"step": step, "totalSteps": 900, "epoch": step * 15 // 900})
    status.metrics = Metrics.model_validate(
        {"rewardMean": reward, "klLoss": 0.002, "responseLengthMean": 311, "tokensPerSecond": 5400}
    )
    checkpoint_step = step - step % 50
    if checkpoint_step:
        status.checkpoint = CheckpointStatus.model_validate(
            {"step": checkpoint_step, "uri": f"s3://ckpt/loka/qwen-gsm8k/global_step_{checkpoint_step}"}
        )


@dataclass(frozen=True)
class Step:
    minutes: int
    rayjob: Manifest | None = None
    workload: Manifest | None = None
    suspend: bool = False
    invalid: Problem | None = None
    missing_secrets: Problem | None = None
    blocked: Problem | None = None
    trainer: Callable[[TrainingRunStatus], None] | None = None


def _history(*steps: Step, generation: int = 1) -> TrainingRunStatus:
    """Feed the operator's calculator one observation after another, as reconciles would."""
    status = TrainingRunStatus()
    for step in steps:
        observed = Observed(
            generation=generation,
            suspend=step.suspend,
            queued=True,
            now=T0 + timedelta(minutes=step.minutes),
            invalid=step.invalid,
            missing_secrets=step.missing_secrets,
            blocked=step.blocked,
            rayjob=step.rayjob,
            workload=step.workload,
        )
        status = calculate_status(observed, status).status
        if step.trainer is not None:
            step.trainer(status)
    return status


QUEUED = Step(1, _rayjob("Suspended"), NO_QUOTA)
STARTING = Step(20, _rayjob("Initializing"), ADMITTED)
RUNNING = Step(25, _rayjob("Running", "RUNNING"), ADMITTED, trainer=lambda s: _trainer_reports(s, 120, 0.61))

SCENARIOS: dict[str, Callable[[], TrainingRunStatus | None]] = {
    "no-status": lambda: None,
    "pending": lambda: _history(Step(0)),
    "missing-secret": lambda: _history(Step(0, missing_secrets=MISSING_SECRET)),
    "invalid-spec": lambda: _history(Step(0, invalid=INVALID)),
    "cannot-launch": lambda: _history(Step(0, blocked=NAME_CONFLICT)),
    "queued": lambda: _history(Step(0), QUEUED),
    "starting": lambda: _history(Step(0), QUEUED, STARTING),
    "running": lambda: _history(Step(0), QUEUED, STARTING, RUNNING),
    "preempted": lambda: _history(Step(0), QUEUED, STARTING, RUNNING, Step(300, _rayjob("Suspended"), PREEMPTED)),
    "resuming": lambda: _history(
        Step(0), QUEUED, STARTING, RUNNING, Step(300, _rayjob("Suspended"), PREEMPTED), Step(330, _rayjob(""), ADMITTED)
    ),
    "suspended": lambda: _history(
        Step(0), QUEUED, STARTING, RUNNING, Step(300, _rayjob("Suspended"), _workload(active=False), suspend=True)
    ),
    "succeeded": lambda: _history(
        Step(0),
        QUEUED,
        STARTING,
        RUNNING,
        Step(600, _rayjob("Running", "RUNNING"), ADMITTED, trainer=lambda s: _trainer_reports(s, 900, 0.83)),
        Step(601, _rayjob("Complete", "SUCCEEDED", message="Job finished successfully."), ADMITTED),
    ),
    "failed": lambda: _history(
        Step(0),
        QUEUED,
        STARTING,
        RUNNING,
        Step(
            400,
            _rayjob("Failed", "FAILED", reason="AppFailed", message="Job entrypoint command failed with exit code 1"),
        ),
    ),
    "stale-generation": lambda: _history(Step(0), QUEUED, STARTING, RUNNING),
}
GENERATION = {"stale-generation": 2}


def run_with(name: str) -> Manifest:
    run: Manifest = copy.deepcopy(RUN)
    run["metadata"].update(
        {
            "generation": GENERATION.get(name, 1),
            "uid": "8a0f6c1e-3f2b-4c55-9d1e-2b7f4c0e9a11",
            "resourceVersion": "48213",
            "creationTimestamp": T0.isoformat().replace("+00:00", "Z"),
        }
    )
    status = SCENARIOS[name]()
    if status is not None:
        run["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return run


def write_testdata() -> None:
    for old in TESTDATA.glob("*.yaml"):
        old.unlink()
    for name in SCENARIOS:
        (TESTDATA / f"{name}.yaml").write_text(yaml.safe_dump(run_with(name), sort_keys=False, width=200))


if __name__ == "__main__":
    write_testdata()
