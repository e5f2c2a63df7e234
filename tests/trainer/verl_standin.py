"""A stand-in for ``python -m verl.trainer.main_ppo`` that runs on CPU, with verl's process shape.

verl cannot train without GPUs, but how it lives next to the trainer can be reproduced: the driver joins the
Ray cluster with the runtime_env the trainer rendered, trains in a TaskRunner actor (a Ray worker process,
outside the driver's process group), writes verl's metrics file, and after each save calls the checkpoint
callback class named by ``trainer.checkpoint_callback_class`` (Loka's real S3 callback). The driver also has
a child in its own process group that takes a moment to exit on SIGTERM, as Ray's local processes do.

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


def write_checkpoint(folder: Path, step: int) -> Path:
    """A small folder shaped like verl's global_step_N."""
    checkpoint = folder / f"global_step_{step}"
    actor = checkpoint / "actor"
    actor.mkdir(parents=True, exist_ok=True)
    for kind in ("model", "optim", "extra_state"):
        (actor / f"{kind}_world_size_1_rank_0.pt").write_bytes(os.urandom(64 * 1024))
    (checkpoint / "data.pt").write_bytes(os.urandom(1024))
    (folder / "latest_checkpointed_iteration.txt").write_text(str(step))
    return checkpoint


def task_runner(config: dict[str, str], pids: Path) -> int:
    """verl's TaskRunner.run: train from the local checkpoint verl would resume from, save, call the callback."""
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

    from loka_trainer.step_metrics import MetricsWriter

    record_pid(pids, "actor")
    local = Path(config["trainer.default_local_dir"])
    total = int(config["trainer.total_training_steps"])
    every = int(config["trainer.save_freq"])
    tracker = local / "latest_checkpointed_iteration.txt"
    start = int(tracker.read_text()) if config["trainer.resume_mode"] == "auto" and tracker.is_file() else 0
    callback = build_checkpoint_callback(
        SimpleNamespace(trainer={"checkpoint_callback_class": config.get("trainer.checkpoint_callback_class")})
    )
    writer = MetricsWriter(Path(os.environ["VERL_FILE_LOGGER_PATH"]))
    for step in range(start + 1, total + 1):
        began = time.monotonic()
        time.sleep(STEP_SECONDS)
        timing = {}
        if step % every == 0 or step == total:
            folder = write_checkpoint(local, step)
            trainer = SimpleNamespace(global_steps=step, total_training_steps=total)
            callback.on_save(trainer=trainer, global_step=step, checkpoint_dir=str(folder), async_save=False)
            timing["timing_s/save_checkpoint"] = time.monotonic() - began - STEP_SECONDS
        timing["timing_s/step"] = time.monotonic() - began
        writer.log(step, {"training/global_step": step, "critic/score/mean": step / total, **timing})
    writer.close()
    return total


def driver(argv: list[str]) -> int:
    """verl.trainer.main_ppo: join Ray with the rendered runtime_env, run the TaskRunner actor, wait for it."""
    import ray

    pids = Path.cwd() / "pids"  # the trainer starts verl in the run's work dir
    record_pid(pids, "driver")
    config, env = parse_overrides(argv)
    child = subprocess.Popen([sys.executable, "-c", LINGERING_CHILD])
    record_pid(pids, "group-child", child.pid)
    try:
        ray.init(runtime_env={"env_vars": env})  # log_to_driver, as verl: the actors print into its output
        runner: Any = ray.remote(num_cpus=0, max_restarts=0)(TaskRunner).remote()
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
    from loka_trainer import cli
    from loka_trainer.engines import verl

    rendered = verl.command

    def standin_command(job: Any, environ: Any = None) -> list[str]:
        argv = rendered(job, environ)
        return [sys.executable, str(Path(__file__).resolve()), *argv[argv.index("verl.trainer.main_ppo") + 1 :]]

    verl.command = standin_command
    return cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["trainer"]:
        raise SystemExit(trainer(sys.argv[2:]))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(driver(sys.argv[1:]))
