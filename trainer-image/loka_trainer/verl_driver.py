"""``python -m loka_trainer.verl_driver <hydra overrides>``: verl's ``main_ppo``, with its TaskRunner on this node.

verl starts its driver actor (TaskRunner: the training loop, the W&B tracker, the checkpoint callback) with a
plain ``TaskRunner.remote()``, so Ray may place it on any node. The W&B key is only in the head pod
(``loka_api.secret_routes``), where ``loka-trainer run`` starts this process: the TaskRunner is
pinned here, hard. It also installs Loka's hook in verl's training loop (``loka_trainer.verl_hook``: every step's
reward figures, the rollouts kept), and is guarded (``guarded_task_runner``): its trainer calls Loka's
checkpoint callback at every step end, and no way out of it drops a checkpoint upload in flight. Everything
else is verl's own entry point, unchanged.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from loka_trainer.verl_hook import task_runner_with_hook

log = logging.getLogger(__name__)


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


def guarded_task_runner(base: type, *, hook_verl: bool = True) -> type:
    """verl's TaskRunner class whose ``run`` hooks the step end into verl's trainer (``hook_verl``) and, however it
    ends (an exception right after a save included), first waits for the checkpoint upload in flight.
    """

    class LokaTaskRunner(base):  # type: ignore[misc]
        def run(self, *args: Any, **kwargs: Any) -> Any:
            from loka_trainer.verl_callback import finish_uploads_in_flight, hook_verl_trainer

            if hook_verl:
                hook_verl_trainer()
            try:
                return super().run(*args, **kwargs)
            finally:
                finish_uploads_in_flight()

    LokaTaskRunner.__name__ = LokaTaskRunner.__qualname__ = base.__name__
    return LokaTaskRunner


def guarded_actor(task_runner_class: Any) -> Any:
    """The Ray actor class ``task_runner_class`` (verl's, with its options), guarded."""
    import ray

    base = task_runner_class.__ray_actor_class__
    options = dict(getattr(task_runner_class, "_default_options", None) or {})
    guarded = guarded_task_runner(base)
    return ray.remote(**options)(guarded) if options else ray.remote(guarded)


def defer_sigterm_to_trainer() -> None:
    """Ray's job stop sends SIGTERM to `loka-trainer run` and to this process at once. This process must live on
    while its TaskRunner saves the step in flight: a SIGTERM ends it only once the trainer released it
    (``loka_trainer.stop_handshake``); before that it is noted and ignored (the trainer sends its own).
    """
    from loka_api.contract import ENV_STOP_HANDSHAKE
    from loka_trainer.stop_handshake import StopHandshake

    folder = os.environ.get(ENV_STOP_HANDSHAKE)
    if not folder:
        return
    handshake = StopHandshake(Path(folder))

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        del frame
        if handshake.released():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.warning("SIGTERM: the trainer has the step in flight saved first, then stops verl")

    signal.signal(signal.SIGTERM, on_sigterm)


def main() -> None:
    from verl.trainer import main_ppo

    defer_sigterm_to_trainer()
    run_ppo = main_ppo.run_ppo

    def run_ppo_on_this_node(config: Any, task_runner_class: Any) -> None:
        run_ppo(config, task_runner_class=OnThisNode(guarded_actor(task_runner_with_hook(task_runner_class))))

    main_ppo.run_ppo = run_ppo_on_this_node
    main_ppo.main()


if __name__ == "__main__":
    main()
