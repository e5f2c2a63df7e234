"""`loka eval submit|status|wait|delete`: Evaluations as the client library returns them, printed like runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from loka_api.evaluation import Evaluation, EvaluationPhase
from loka_cli import resources
from loka_cli.views import age, columns
from loka_client import EvaluationView
from loka_client.describe import evaluation_line


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def table(evaluations: Sequence[Evaluation], *, all_namespaces: bool = False, now: datetime | None = None) -> str:
    """One line per Evaluation: the printer columns of `kubectl get evaluations`."""
    rows = [
        (
            evaluation.metadata.namespace,
            [
                evaluation.metadata.name,
                evaluation.status.phase or EvaluationPhase.PENDING,
                evaluation.spec.rollouts.from_run,
                "-" if evaluation.status.samples_judged is None else str(evaluation.status.samples_judged),
                "-" if evaluation.status.agreement is None else f"{evaluation.status.agreement:.2f}",
                "-" if evaluation.status.preferences is None else str(evaluation.status.preferences),
                age(evaluation.metadata.creation_timestamp, now),
            ],
        )
        for evaluation in evaluations
    ]
    header = ["NAME", "PHASE", "RUN", "SAMPLES", "AGREEMENT", "PAIRS", "AGE"]
    return columns(header, rows, all_namespaces=all_namespaces)


def describe(evaluation: Evaluation) -> str:
    """One Evaluation: where it stands, its source, each judge's figures and where it wrote."""
    spec, status = evaluation.spec, evaluation.status
    phase = status.phase or EvaluationPhase.PENDING
    lines = [f"{evaluation.metadata.name}   {phase}   run {spec.rollouts.from_run} (steps {spec.rollouts.steps})"]
    if status.message:
        lines.append(f"  {status.message}")
    if status.samples is not None:
        judged = f"  samples   {status.samples_judged or 0} of {status.samples} judged"
        lines.append(judged + (f" (steps {', '.join(map(str, status.steps))})" if status.steps else ""))
    if status.judges:
        lines.append("  judges    NAME        JUDGED   PARSED   ERRORS   TOKENS")
        lines += [
            f"{'':12}{j.name:<10}  {j.judged:>6}   {_rate(j.parse_rate):>6}   {_rate(j.error_rate):>6}   {j.tokens:>6}"
            for j in status.judges
        ]
    if status.agreement is not None:
        lines.append(f"  agreement {status.agreement:.2f} (aggregate: {spec.aggregate})")
    if status.tokens is not None:
        lines.append(f"  tokens    {status.tokens}")
    if status.preferences is not None:
        lines.append(f"  pairs     {status.preferences} -> {status.preferences_uri or spec.output.uri}")
    if status.scores_uri:
        lines.append(f"  scores    {status.scores_uri}")
    if status.job:
        lines.append(f"  job       {status.job}")
    return "\n".join(lines)


PRINTER: resources.Printer[EvaluationView] = resources.Printer(
    objects=lambda client: client.evaluations,
    command="loka eval status",
    table=lambda found, all_namespaces: table(found, all_namespaces=all_namespaces),
    describe=lambda _, evaluation: describe(evaluation),
    line=lambda evaluation: evaluation_line(evaluation.status),
    ended=lambda _, evaluation: describe(evaluation),
    deleted="its Job goes with it; scores and pairs stay in S3",
)
