"""Reward models the operator serves for a run (``spec.reward.components[].rewardModel.fromRun``).

Both sides read it: the operator names the server's Deployment and Service from it, and the trainer's reward
components find the server at the Service's cluster address (``served_url``), which the rubric is given in place
of an endpoint (``with_served_endpoints``).
"""

from __future__ import annotations

import hashlib

from loka_api.models import RewardComponent, RewardModelServing, TrainingRunSpec

# The port every served reward model listens on (the CPU server's and vLLM's default).
SERVED_PORT = 8000
# Where the staged checkpoint lies in the server pod (an emptyDir the init container fills).
SERVED_MODEL_DIR = "/models/rm"
# A Service name is a DNS-1035 label.
MAX_SERVICE_NAME = 63


def served_components(spec: TrainingRunSpec) -> list[RewardComponent]:
    """The reward components whose model the operator serves (a rewardModel given by fromRun)."""
    components = (spec.reward.components if spec.reward is not None else None) or []
    return [c for c in components if c.reward_model is not None and c.reward_model.from_run is not None]


def serving_of(component: RewardComponent) -> RewardModelServing:
    """The server's shape: the component's rewardModel.serving, or one CPU pod."""
    settings = component.reward_model
    return (settings.serving if settings is not None else None) or RewardModelServing()


def dns_name(component: str) -> str:
    """A component name (lowercase letters, digits, _) as a DNS label part."""
    return component.replace("_", "-")


def service_name(run: str, component: str) -> str:
    """The Service (and Deployment) of a served reward model: ``<run>-rm-<component>``, its run's name cut and a
    digest added where that passes the 63 characters a Service name may have."""
    name = f"{run}-rm-{dns_name(component)}"
    if len(name) <= MAX_SERVICE_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    suffix = f"-{digest}-rm-{dns_name(component)}"[-(MAX_SERVICE_NAME - 1) :]
    return f"{run[: MAX_SERVICE_NAME - len(suffix)].rstrip('-')}{suffix}".lstrip("-")


def served_url(run: str, namespace: str, component: str) -> str:
    """Where the run's pods reach a served reward model: its Service's cluster address."""
    return f"http://{service_name(run, component)}.{namespace}.svc:{SERVED_PORT}"


def with_served_endpoints(components: list[RewardComponent], *, run: str, namespace: str) -> list[RewardComponent]:
    """The rubric as the trainer calls it: each served reward model's endpoint is its Service's address."""
    resolved = []
    for component in components:
        settings = component.reward_model
        if settings is None or settings.from_run is None:
            resolved.append(component)
            continue
        served = settings.model_copy(update={"endpoint": served_url(run, namespace, component.name)})
        resolved.append(component.model_copy(update={"reward_model": served}))
    return resolved
