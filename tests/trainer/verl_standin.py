"""A stand-in for verl's ``main_ppo`` (run by `loka_trainer.verl_driver`) on CPU, with verl's process shape.

verl cannot train without GPUs, but how it lives next to the trainer can be reproduced: the driver joins the
Ray cluster with the runtime_env the trainer rendered, trains in a TaskRunner actor (a Ray worker process,
outside the driver's process group), writes verl's metrics file, and after each save calls the checkpoint
callback class named by ``trainer.checkpoint_callback_class`` (Loka's real S3 callback). What Loka's driver
adds to verl's is the real code here: the SIGTERM deferral, the guarded TaskRunner and the step-end hook. The
driver also has a child in its own process group that takes a moment to exit on SIGTERM, as Ray's local
processes do. ``STANDIN_SHARD_BYTES`` and ``STANDIN_FAIL_AFTER_SAVE`` (a step) in the trainer's environment
make checkpoints larger and raise right after a save.

    python -m tests.trainer.verl_standin trainer run --work-dir DIR   # `loka-trainer` launching the stand-in
    python tests/trainer/verl_standin.py OVERRIDES...                   # what the trainer launches

Each process writes its pid to ``<work dir>/pids/<role>`` so a test can check that all of them are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

STEP_SECONDS = 1.0
RUNTIME_ENV = "+ray_kwargs.ray_init.runtime_env.env_vars."
# A process in the driver's group that finishes "in-flight work" for a moment after SIGTERM.
LINGERING_CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(4), sys.exit(0)))\n"
    "while True: time.sleep(1)\n"
)


def record_pid(folder: Path, role: str, pid: int | None = None) -> None:
    folder.mkdir(exist_ok=True)
    (folder / role).write_text(str(pid or os.getpid()))


def parse_overrides(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(verl config key -> value, actor env var -> value) from the Hydra overrides the trainer rendered."""
    config: dict[str, str] = {}
    env: dict[str, str] = {}
    for override in argv:
        key, _, value = override.partition("=")
        if key.startswith(RUNTIME_ENV):
            quoted = value.startswith('"') and value.endswith('"')
            env[key.removeprefix(RUNTIME_ENV)] = value[1:-1].replace('\\"', '"') if quoted else value
        else:
            config[key.lstrip("+")] = value.strip("'")
    return config, env


def write_checkpoint(folder: Path, step: int, shard_bytes: int = 64 * 1024) -> Path:
    """A small folder shaped like verl's global_step_N."""
    checkpoint = folder / f"global_step_{step}"
    actor = checkpoint / "actor"
    actor.mkdir(parents=True, exist_ok=True)
    for kind in ("model", "optim", "extra_state"):
        (actor / f"{kind}_world_size_1_rank_0.pt").write_bytes(os.urandom(shard_bytes))
    (checkpoint / "data.pt").write_bytes(os.urandom(1024))
    (folder / "latest_checkpointed_iteration.txt").write_text(str(step))
    return checkpoint


class StandinTrainer:
    """verl's v1 PPO trainer loop as Loka sees it: ``_save_checkpoint`` calls the callback, ``on_step_end`` is
    hooked (``loka_trainer.verl_callback.with_step_end_hook``) at the end of every step.
    """

    def __init__(self, config: dict[str, str]) -> None:
        from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

        self.config = config
        self.local = Path(config["trainer.default_local_dir"])
        self.total_training_steps = int(config["trainer.total_training_steps"])
        self.shard_bytes = int(config.get("standin.shard_bytes", 64 * 1024))
        self.checkpoint_callback = build_checkpoint_callback(
            SimpleNamespace(trainer={"checkpoint_callback_class": config.get("trainer.checkpoint_callback_class")})
        )
        tracker = self.local / "latest_checkpointed_iteration.txt"
        resume = config["trainer.resume_mode"] == "auto" and tracker.is_file()
        self.global_steps = int(tracker.read_text()) if resume else 0

    def _save_checkpoint(self) -> None:
        folder = write_checkpoint(self.local, self.global_steps, self.shard_bytes)
        self.checkpoint_callback.on_save(
            trainer=self, global_step=self.global_steps, checkpoint_dir=str(folder), async_save=False
        )

    def on_step_end(self) -> None:
        """verl's own step end (the weights go to the rollout replicas): nothing here."""

    def fit(self) -> int:
        from loka_trainer.step_metrics import MetricsWriter

        every = int(self.config["trainer.save_freq"])
        fail_after_save = int(self.config.get("standin.fail_after_save", 0))
        writer = MetricsWriter(Path(os.environ["VERL_FILE_LOGGER_PATH"]))
        self.global_steps += 1
        while self.global_steps <= self.total_training_steps:
            step = self.global_steps
            began = time.monotonic()
            time.sleep(STEP_SECONDS)
            timing = {}
            if step % every == 0 or step == self.total_training_steps:
                self._save_checkpoint()
                timing["timing_s/save_checkpoint"] = time.monotonic() - began - STEP_SECONDS
                if step == fail_after_save:
                    raise RuntimeError(f"NCCL timeout right after the save of step {step}")  # as verl may
            self.on_step_end()
            timing["timing_s/step"] = time.monotonic() - began
            writer.log(step, {"training/global_step": step, "critic/score/mean": step / self.total_training_steps,
                              **timing})  # fmt: skip
            self.global_steps += 1
        writer.close()
        return self.total_training_steps


def task_runner(config: dict[str, str], pids: Path) -> int:
    """verl's TaskRunner.run: build the trainer (hooked as Loka's driver hooks verl's) and fit."""
    from loka_trainer.verl_callback import with_step_end_hook

    record_pid(pids, "actor")
    return int(with_step_end_hook(StandinTrainer)(config).fit())


def driver(argv: list[str]) -> int:
    """verl.trainer.main_ppo through loka_trainer.verl_driver: join Ray with the rendered runtime_env, run the
    guarded TaskRunner actor, wait for it.
    """
    import ray

    from loka_trainer.verl_driver import defer_sigterm_to_trainer, guarded_task_runner

    defer_sigterm_to_trainer()
    pids = Path.cwd() / "pids"  # the trainer starts verl in the run's work dir
    record_pid(pids, "driver")
    config, env = parse_overrides(argv)
    for key in ("standin.shard_bytes", "standin.fail_after_save"):  # knobs a test sets in the trainer's env
        if os.environ.get(key.replace(".", "_").upper()):
            config[key] = os.environ[key.replace(".", "_").upper()]
    child = subprocess.Popen([sys.executable, "-c", LINGERING_CHILD])
    record_pid(pids, "group-child", child.pid)
    try:
        ray.init(runtime_env={"env_vars": env})  # log_to_driver, as verl: the actors print into its output
        runner: Any = ray.remote(num_cpus=0, max_restarts=0)(guarded_task_runner(TaskRunner, hook_verl=False)).remote()
        steps = ray.get(runner.run.remote(config, pids))
        print(f"stand-in verl trained to step {steps}", flush=True)
    except Exception:  # a failed run leaves no child behind; a SIGTERM (SystemExit) leaves it to the group's stop
        child.kill()
        raise
    child.terminate()
    child.wait()
    return 0


class TaskRunner:
    def run(self, config: dict[str, str], pids: Path) -> int:
        return task_runner(config, pids)


def trainer(argv: list[str]) -> int:
    """``loka-trainer`` (its real runner, signal handling and status), launching this stand-in instead of verl."""
    from loka_api.recipes.grpo import ENTRYPOINT as VERL_DRIVER
    from loka_trainer import cli
    from loka_trainer.engines import verl

    rendered = verl.command

    def standin_command(job: Any, environ: Any = None) -> list[str]:
        argv = rendered(job, environ)
        return [sys.executable, str(Path(__file__).resolve()), *argv[argv.index(VERL_DRIVER) + 1 :]]

    verl.command = standin_command
    return cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["trainer"]:
        raise SystemExit(trainer(sys.argv[2:]))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(driver(sys.argv[1:]))
