"""Pure: a RewardCycle's stages as the manifests of ordinary TrainingRuns and Evaluations, chained by name.

Each stage's spec is the cycle's template for it as the user wrote it (no defaults filled in, so the stage reads as
if applied by hand), with only the links set: the burst an Evaluation judges (``rollouts.fromRun``), the Evaluation a
reward model trains on (``data.fromEvaluation``), and for every burst after the first the previous burst's final
checkpoint (``model.fromRun``) and the previous reward model as a reward component (``rewardModel.fromRun``, served for
the burst by the operator, unless the cycle gives an endpoint of its own).
"""

from __future__ import annotations

import copy
from typing import Any

from loka_api.contract import FROM_RUN_FINAL
from loka_api.cycle import FUNCTION_COMPONENT, Stage, stage_name
from loka_api.models import RewardComponentKind, default_agent_rubric
from loka_operator import naming
from loka_operator.children import CYCLE_EVALUATION, CYCLE_RUN

JSON = dict[str, Any]


def build_stage(cycle: JSON, iteration: int, stage: Stage) -> JSON:
    """The TrainingRun or Evaluation of ``stage`` in ``iteration`` of the cycle ``cycle`` (its body as stored: the
    templates as written), labelled and owned by the cycle."""
    meta, spec = cycle["metadata"], cycle["spec"]
    cycle_name = meta["name"]
    name = stage_name(cycle_name, iteration, stage)
    child = CYCLE_EVALUATION if stage is Stage.EVALUATION else CYCLE_RUN
    manifest = child.manifest(name, run=cycle_name, namespace=meta["namespace"], uid=meta["uid"])
    manifest["metadata"]["labels"] |= {
        naming.LABEL_CYCLE_ITERATION: str(iteration),
        naming.LABEL_CYCLE_STAGE: stage.value,
    }
    if stage is Stage.RL:
        manifest["spec"] = burst_spec(spec, cycle_name, iteration)
    elif stage is Stage.EVALUATION:
        manifest["spec"] = evaluation_spec(spec, stage_name(cycle_name, iteration, Stage.RL), name)
    else:
        manifest["spec"] = reward_model_spec(spec, stage_name(cycle_name, iteration, Stage.EVALUATION))
    return manifest


def burst_spec(spec: JSON, cycle: str, iteration: int) -> JSON:
    """Burst ``iteration``: ``spec.rl``; after the first, from the previous burst's final checkpoint and rewarded by
    the previous reward model too."""
    burst: JSON = copy.deepcopy(spec["rl"])
    if iteration == 1:
        return burst
    burst["model"] = {"fromRun": {"name": stage_name(cycle, iteration - 1, Stage.RL), "checkpoint": FROM_RUN_FINAL}}
    reward = spec["reward"]
    settings = copy.deepcopy(reward["rewardModel"])
    if not settings.get("endpoint"):  # the operator serves the reward model the burst follows, for the burst
        previous = stage_name(cycle, iteration - 1, Stage.REWARD_MODEL)
        settings["fromRun"] = {"name": previous, "checkpoint": FROM_RUN_FINAL}
    component = {
        "name": reward.get("name", "rm"),
        "kind": RewardComponentKind.REWARD_MODEL.value,
        "weight": reward.get("weight", 1.0),
        "rewardModel": settings,
    }
    own = [] if reward.get("combine", "add") == "replace" else own_components(burst)
    burst["reward"] = {"components": [*own, component]}
    return burst


def own_components(burst: JSON) -> list[JSON]:
    """A burst's own reward as components: as given, its function as the component ``task``, or an environment's
    default rubric."""
    reward = burst.get("reward") or {}
    if reward.get("components"):
        return copy.deepcopy(list(reward["components"]))
    if reward.get("function"):
        function = RewardComponentKind.FUNCTION.value
        return [{"name": FUNCTION_COMPONENT, "kind": function, "function": reward["function"]}]
    if burst.get("environment"):
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in default_agent_rubric()]
    return []


def evaluation_spec(spec: JSON, burst: str, name: str) -> JSON:
    """The Evaluation of ``burst``'s kept rollouts, writing under ``<evaluation.output.uri>/<name>``."""
    evaluation: JSON = copy.deepcopy(spec["evaluation"])
    evaluation["rollouts"] = {**evaluation.get("rollouts", {}), "fromRun": burst}
    evaluation["output"] = {**evaluation["output"], "uri": f"{evaluation['output']['uri'].rstrip('/')}/{name}"}
    return evaluation


def reward_model_spec(spec: JSON, evaluation: str) -> JSON:
    """The reward model trained on ``evaluation``'s preference pairs."""
    reward_model: JSON = copy.deepcopy(spec["rewardModel"])
    reward_model["data"] = {**reward_model.get("data", {}), "fromEvaluation": evaluation}
    return reward_model
