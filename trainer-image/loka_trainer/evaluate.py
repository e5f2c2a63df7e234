"""``loka-trainer evaluate``: the pod of an ``Evaluation`` (loka_api.evaluation) judges its source run's rollouts
(loka_trainer.evaluation) and reports the figures into the Evaluation's status.

The operator resolves the source run's rollouts into ``status.rolloutsURI`` before it starts the Job, mounts each
judge's rubric ConfigMap key at ``EVALUATION_RUBRIC_DIR/<judge>`` and gives each judge's API key as
``LOKA_JUDGE_API_KEY_<JUDGE>`` (``secretKeyRef``): the pod reads no other object than its own Evaluation.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loka_api.contract import (
    ENV_EVALUATION_NAME,
    ENV_EVALUATION_NAMESPACE,
    EVALUATION_RUBRIC_DIR,
    judge_api_key_env,
)
from loka_api.evaluation import Evaluation, JudgeSpec, parse_steps
from loka_api.storage import S3Uri
from loka_trainer.evaluation import PREFERENCES_FILE, SCORES_FILE, EvaluationPlan, EvaluationSummary
from loka_trainer.rewards.judge import DEFAULT_RUBRIC, JudgeConfig

log = logging.getLogger(__name__)


def judge_config(judge: JudgeSpec, rubric_dir: Path) -> JudgeConfig:
    rubric = DEFAULT_RUBRIC
    if judge.rubric is not None and judge.rubric.text is not None:
        rubric = judge.rubric.text
    elif judge.rubric is not None and judge.rubric.config_map is not None:
        path = rubric_dir / judge.name
        try:
            rubric = path.read_text(encoding="utf-8")
        except OSError as error:
            ref = judge.rubric.config_map
            msg = f"judges[{judge.name}].rubric: ConfigMap {ref.name} key {ref.key} is not mounted at {path} ({error})"
            raise ValueError(msg) from error
    return JudgeConfig.from_settings(judge, name=judge.name, rubric=rubric, api_key_env=judge_api_key_env(judge.name))


def evaluation_plan(evaluation: Evaluation, *, rollouts_uri: str, rubric_dir: Path) -> EvaluationPlan:
    spec = evaluation.spec
    return EvaluationPlan(
        rollouts_uri=rollouts_uri,
        output_uri=spec.output.uri,
        judges=[judge_config(judge, rubric_dir) for judge in spec.judges],
        steps=parse_steps(spec.rollouts.steps),
        aggregate=spec.aggregate,
        min_margin=spec.preferences.min_margin,
        max_pairs_per_prompt=spec.preferences.max_pairs_per_prompt,
    )


def summary_status(summary: EvaluationSummary, output_uri: str) -> dict[str, Any]:
    """The status fields the evaluator writes (the operator writes phase, conditions and job)."""
    output = S3Uri.parse(output_uri)
    return {
        "steps": summary.steps,
        "samples": summary.samples,
        "samplesJudged": summary.samples_judged,
        "preferences": summary.preferences,
        "agreement": summary.agreement,
        "tokens": summary.tokens,
        "judges": [
            {
                "name": name,
                "judged": figures.judged,
                "parseRate": figures.parse_rate,
                "errorRate": figures.error_rate,
                "tokens": figures.tokens,
            }
            for name, figures in summary.judges.items()
        ],
        "scoresURI": str(output.join(SCORES_FILE)),
        "preferencesURI": str(output.join(PREFERENCES_FILE)),
        "completionTime": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def evaluate_from_environment(*, kubeconfig: str | None = None) -> int:
    """Entry point of ``loka-trainer evaluate``."""
    from kubernetes import client

    from loka_api.kinds import EVALUATION
    from loka_api.storage import ObjectStore
    from loka_trainer.evaluation import Evaluation as Evaluator
    from loka_trainer.run_client import api_client

    name, namespace = os.environ.get(ENV_EVALUATION_NAME), os.environ.get(ENV_EVALUATION_NAMESPACE)
    if not name or not namespace:
        log.error("%s and %s must name this pod's Evaluation", ENV_EVALUATION_NAME, ENV_EVALUATION_NAMESPACE)
        return 1
    objects: Any = client.CustomObjectsApi(api_client(kubeconfig))
    body = objects.get_namespaced_custom_object(*EVALUATION.gvr[:2], namespace, EVALUATION.plural, name)
    evaluation = Evaluation.model_validate(body)
    rollouts = evaluation.status.rollouts_uri
    if not rollouts:
        log.error(
            "Evaluation %s/%s has no status.rolloutsURI: the operator resolves it before starting", namespace, name
        )
        return 1

    def patch(fields: dict[str, Any]) -> None:
        objects.patch_namespaced_custom_object_status(
            *EVALUATION.gvr[:2], namespace, EVALUATION.plural, name, {"status": fields}
        )

    try:
        plan = evaluation_plan(evaluation, rollouts_uri=rollouts, rubric_dir=Path(EVALUATION_RUBRIC_DIR))
        endpoint = evaluation.spec.storage.endpoint if evaluation.spec.storage else None
        summary = Evaluator(plan, ObjectStore(endpoint_url=endpoint)).run()
    except (ValueError, OSError) as error:
        log.error("evaluation failed: %s", error)
        patch({"message": f"evaluation failed: {error}"[:1024]})
        return 1
    patch(summary_status(summary, evaluation.spec.output.uri))
    log.info(
        "judged %d of %d trajectories, %d preference pairs",
        summary.samples_judged,
        summary.samples,
        summary.preferences,
    )
    return 0
