"""``python -m loka_trainer.verl_driver <hydra overrides>``: verl's ``main_ppo``, with its TaskRunner on this node.

verl starts its driver actor (TaskRunner: the training loop, the W&B tracker, the checkpoint callback) with a
plain ``TaskRunner.remote()``, so Ray may place it on any node. The W&B key is only in the head pod
(``loka_api.contract.SECRET_ENV_PODS``), where ``loka-trainer run`` starts this process: the TaskRunner is
pinned here, hard. It also installs Loka's hook in verl's training loop (``loka_trainer.verl_hook``: every step's
reward figures, the rollouts kept). Everything else is verl's own entry point, unchanged.
"""

from __future__ import annotations

from typing import Any

from loka_trainer.verl_hook import task_runner_with_hook


class OnThisNode:
    """An actor class whose instances are placed on the node of the process that creates them."""

    def __init__(self, actor_class: Any) -> None:
        self.actor_class = actor_class

    def options(self, **options: Any) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        pinned = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
        return self.actor_class.options(scheduling_strategy=pinned, **options)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.options().remote(*args, **kwargs)


def main() -> None:
    from verl.trainer import main_ppo

    run_ppo = main_ppo.run_ppo

    def run_ppo_on_this_node(config: Any, task_runner_class: Any) -> None:
        run_ppo(config, task_runner_class=OnThisNode(task_runner_with_hook(task_runner_class)))

    main_ppo.run_ppo = run_ppo_on_this_node
    main_ppo.main()


if __name__ == "__main__":
    main()
