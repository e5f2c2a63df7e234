"""Prometheus metrics: reconciles by result, reconcile duration, runs by phase, time queued, API requests, lead,
what interruptions cost (by reason and queue), Evaluations by phase and how long their Jobs ran."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loka_api import RunPhase


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(
            "loka_reconcile_total", "Reconciles of TrainingRuns by result.", ["result"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "loka_reconcile_duration_seconds",
            "Time one reconcile of a TrainingRun took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.in_flight = Gauge("loka_reconciles_in_flight", "Reconciles running now.", registry=self.registry)
        self.runs = Gauge("loka_runs", "TrainingRuns by phase.", ["phase"], registry=self.registry)
        self.queued_seconds = Histogram(
            "loka_run_queued_seconds",
            "How long a run attempt waited in Kueue's queue before it left the Queued phase.",
            buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "loka_api_requests_total",
            "Kubernetes API requests the operator made, by verb.",
            ["verb"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "loka_leader", "1 while this replica leads (runs the operator), 0 on standby.", registry=self.registry
        )
        self.interruptions = Counter(
            "loka_run_interruptions_total",
            "Attempts that ended before the run finished (preemption, suspension, retry), by reason and queue.",
            ["reason", "queue"],
            registry=self.registry,
        )
        self.steps_lost = Counter(
            "loka_run_steps_lost_total",
            "Training steps done again after interruptions, by reason and queue.",
            ["reason", "queue"],
            registry=self.registry,
        )
        self.gpu_hours_lost = Counter(
            "loka_run_gpu_hours_lost_total",
            "GPU-hours of training done again after interruptions, by reason and queue.",
            ["reason", "queue"],
            registry=self.registry,
        )
        self.evaluations = Gauge("loka_evaluations", "Evaluations by phase.", ["phase"], registry=self.registry)
        self.evaluation_seconds = Histogram(
            "loka_evaluation_duration_seconds",
            "How long an Evaluation's Job ran, from its start until the Evaluation ended, by the phase it ended in.",
            ["phase"],
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600),
            registry=self.registry,
        )
        self._phases: dict[str, str] = {}
        self._evaluation_phases: dict[str, str] = {}

    def observe_phase(self, key: str, phase: RunPhase | None) -> None:
        """Keep `loka_runs{phase}` exact without listing runs on every scrape."""
        _move(self.runs, self._phases, key, phase.value if phase is not None else None)

    def observe_evaluation_phase(self, key: str, phase: str | None) -> None:
        """Keep `loka_evaluations{phase}` exact the same way (None: the Evaluation is gone)."""
        _move(self.evaluations, self._evaluation_phases, key, phase)


def _move(gauge: Gauge, phases: dict[str, str], key: str, phase: str | None) -> None:
    """Count ``key`` under ``phase`` only, in ``gauge`` (by phase) and ``phases`` (what each key is counted under)."""
    old = phases.pop(key, None)
    if old is not None:
        gauge.labels(phase=old).dec()
    if phase is not None:
        phases[key] = phase
        gauge.labels(phase=phase).inc()
