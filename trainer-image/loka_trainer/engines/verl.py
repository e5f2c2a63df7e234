"""The verl engine: run what the run's recipe renders (its entry point, e.g. ``loka_trainer.verl_driver`` around
verl's ``main_ppo``, with Loka's overrides, the actors' environment and the user's verlOverrides), pass its output
on redacted, stop it on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from loka_api import TrainingRunSpec
from loka_api.contract import (
    ENV_CHECKPOINT_KEEP,
    ENV_CHECKPOINT_PREFIX,
    ENV_CHECKPOINT_WRITER,
    ENV_ROLLOUTS,
    ENV_RUN_NAME,
    ENV_RUN_NAMESPACE,
    ENV_RUN_UID,
    ENV_STOP_HANDSHAKE,
    ENV_WANDB_MODE,
)
from loka_api.environments import ENV_ENVIRONMENT
from loka_api.render import StagedPaths, VerlLaunch, render_launch
from loka_trainer.agents.environment import AgentSettings
from loka_trainer.engines import EngineJob, SaveOnStop
from loka_trainer.settings import redact

log = logging.getLogger(__name__)

# Of the time Ray's job supervisor gives the trainer after SIGTERM (loka_api.contract: the save window comes first),
# verl's process group gets this long between SIGTERM and SIGKILL, its Ray actors ACTOR_STOP_WAIT_S more to die.
STOP_GRACE_S = 10.0
# After verl's driver is gone: how long its Ray actors may take to die, and the group's last processes to be reaped.
ACTOR_STOP_WAIT_S = 5.0
# How often the trainer looks for the TaskRunner's answer to a save request.
_HANDSHAKE_POLL_S = 0.2
GROUP_REAP_S = 2.0


# verl's agent_loop_config_path: the image's registration of Loka's MCP agent loop (the same path on every node).
AGENT_LOOPS_YAML = Path(__file__).resolve().parent.parent / "agents" / "agent_loops.yaml"


def staged_paths(job: EngineJob) -> StagedPaths:
    return StagedPaths(
        agent_loop_config=AGENT_LOOPS_YAML if job.spec.environment is not None else None,
        model=job.inputs.model,
        train_files=job.inputs.train_files,
        val_files=job.inputs.val_files,
        checkpoint_dir=job.checkpoint_dir,
        resume_from=job.resume.folder if job.resume is not None and job.resume.explicit else None,
        metrics_file=job.metrics_file,
    )


def actor_environment(job: EngineJob, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Non-secret variables verl's actors need; verl prints its runtime_env, so never a secret here."""
    env = {ENV_WANDB_MODE: job.wandb_mode, ENV_RUN_NAME: job.run_name, ENV_RUN_NAMESPACE: job.namespace}
    if job.checkpoints is not None:
        env[ENV_CHECKPOINT_PREFIX] = str(job.checkpoints.prefix)
        env[ENV_CHECKPOINT_KEEP] = str(job.checkpoints.keep)
        if job.checkpoints.writer is not None:
            env[ENV_CHECKPOINT_WRITER] = job.checkpoints.writer.to_env()
        if job.checkpoints.run_uid:
            env[ENV_RUN_UID] = job.checkpoints.run_uid
        if job.spec.rollouts is not None:
            env[ENV_ROLLOUTS] = job.spec.rollouts.model_dump_json(by_alias=True)
    if job.save_on_stop is not None:
        env[ENV_STOP_HANDSHAKE] = str(job.save_on_stop.handshake.folder)
    if job.spec.environment is not None:
        # The agent loops' servers, limits and failure policy; header values stay ${VAR} references.
        settings = AgentSettings.from_spec(job.spec.environment, run=job.run_name, namespace=job.namespace)
        env[ENV_ENVIRONMENT] = settings.to_json()
    # Outside a pod (the local demo) the actors reach the API server through the same kubeconfig file.
    kubeconfig = (os.environ if environ is None else environ).get("KUBECONFIG")
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return env


def launch(job: EngineJob, environ: Mapping[str, str] | None = None) -> VerlLaunch:
    """The run's launch as its recipe renders it, with the actor environment of this job."""
    return render_launch(
        job.spec,
        run_name=job.run_name,
        namespace=job.namespace,
        paths=staged_paths(job),
        runtime_env=actor_environment(job, environ),
    )


def process_environment(job: EngineJob, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """verl's process environment: ours, the launch's (the actor variables, the metrics file), and permission to
    overlap the RayJob's env.
    """
    return {
        **(os.environ if environ is None else environ),
        **launch(job, environ).environment,
        # The RayJob's runtimeEnvYAML already sets some of these keys; without this Ray refuses to merge the
        # job's runtime_env with verl's ray.init(runtime_env=...) ("same environment variable keys").
        "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
    }


def command(job: EngineJob, environ: Mapping[str, str] | None = None) -> list[str]:
    """The process the trainer starts: ``python -m <entry point> <overrides>``."""
    return launch(job, environ).argv()


class VerlEngine:
    name = "verl"
    uses_ray = True

    def total_steps(self, spec: TrainingRunSpec, train_rows: int) -> int | None:
        if spec.training.max_steps is not None:
            return spec.training.max_steps
        # verl's dataloader drops the last partial batch.
        return max(train_rows // spec.training.batch_size, 0) * spec.training.epochs or None

    def local_checkpoint_ranks(self, spec: TrainingRunSpec) -> frozenset[int] | None:
        from loka_trainer.nodes import current_node_id, ray_rank_layout

        layout = ray_rank_layout(nnodes=spec.resources.workers, gpus_per_node=spec.resources.gpus_per_worker)
        return None if layout is None else layout.get(current_node_id() or "", frozenset())

    def run(self, job: EngineJob) -> int:
        import ray

        if ray.is_initialized():  # the runner joined the RayJob's cluster (uses_ray)
            stage_other_nodes(job)
        argv = command(job)
        log.info("launching verl: %s", " ".join(argv[:3]) + f" … ({len(argv) - 3} overrides)")
        # Hydra writes its outputs/ folder into the working directory: keep it in the run's work dir.
        process = subprocess.Popen(
            argv,
            env=process_environment(job),
            cwd=job.work_dir,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        pump = threading.Thread(target=pass_on_redacted, args=(process.stdout,), name="verl-output", daemon=True)
        pump.start()
        code = wait_or_stop(process, job.stop, save_on_stop=job.save_on_stop)
        if job.stop.is_set() and ray.is_initialized():
            # On the RayJob's cluster verl trains in actors outside its process group; Ray ends them once their
            # driver is gone. Report only then: nothing of verl may move the marker after the trainer says where.
            from loka_trainer.nodes import wait_for_driver_actors

            left = wait_for_driver_actors(process.pid, timeout=ACTOR_STOP_WAIT_S)
            if left:
                log.warning("verl's Ray actors still alive %.0f s after its driver: %s", ACTOR_STOP_WAIT_S, left)
        pump.join(timeout=10)
        return code


def pass_on_redacted(output: IO[bytes], environ: Mapping[str, str] | None = None) -> None:
    """verl's output (its actors' too: Ray forwards them to the driver), line by line, with secret values replaced."""
    for line in iter(output.readline, b""):
        sys.stdout.write(redact(line.decode(errors="replace"), environ))
        sys.stdout.flush()


def stage_other_nodes(job: EngineJob) -> None:
    """Put the model and data on every other Ray node at the same paths as here, and the restored checkpoint's
    shared files and the shards of the ranks each node runs: verl's ranks read them from their own node's disk.
    Another run's checkpoint (spec.model.fromRun) was downloaded and merged here already: the others copy it.
    """
    from loka_trainer.nodes import current_node_id, on_each_node, ray_rank_layout, stage_on_node

    resume = (job.resume.source, job.resume.step) if job.resume is not None else None
    endpoint = job.spec.storage.endpoint if job.spec.storage else None
    spec_json = job.spec.model_dump_json(by_alias=True)
    resources = job.spec.resources
    layout = ray_rank_layout(nnodes=resources.workers, gpus_per_node=resources.gpus_per_worker)

    model_from = current_node_id() if job.spec.model.from_run is not None else None

    def args_for(node: str | None) -> tuple[object, ...]:
        ranks = None if layout is None or node is None else layout.get(node, frozenset())
        return (spec_json, str(job.work_dir), endpoint, resume, ranks, job.source_uri, model_from)

    hosts = on_each_node(stage_on_node, args_for, skip_current=True)
    if hosts:
        log.info("staged inputs on %d other Ray node(s): %s", len(hosts), ", ".join(sorted(hosts)))


def wait_or_stop(
    process: subprocess.Popen[bytes],
    stop: threading.Event,
    *,
    grace_s: float = STOP_GRACE_S,
    save_on_stop: SaveOnStop | None = None,
) -> int:
    """Wait for ``process``; when ``stop`` is set, first let verl end the step in flight with a checkpoint
    (``save_before_stop``), then SIGTERM its process group and wait until the whole group is gone (a Ray that verl
    started itself lives in it: raylet, workers), SIGKILL what is left after ``grace_s``.
    """
    while process.poll() is None:
        if stop.wait(0.5):
            if save_on_stop is not None:
                save_before_stop(process, save_on_stop)
                save_on_stop.handshake.release()
            if process.poll() is not None:
                break
            log.info("stopping verl (pid %d): SIGTERM to its process group", process.pid)
            deadline = time.monotonic() + grace_s
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
            if not _group_gone(process.pid, deadline):
                log.warning("verl's process group did not stop within %.0f s: SIGKILL", grace_s)
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
                _group_gone(process.pid, time.monotonic() + GROUP_REAP_S)
            log.info("verl stopped (exit %s)", process.returncode)
            break
    return process.returncode


def save_before_stop(process: subprocess.Popen[bytes], plan: SaveOnStop) -> None:
    """Ask verl's TaskRunner to save at the end of the step in flight and wait for its answer until the window
    is over (``plan.abandon``) or verl is gone; record the step saved or why there is none.
    """
    started = time.monotonic()
    plan.handshake.request_save(plan.reason)
    log.info("asked verl to save at the end of the step in flight (%.0f s to do it)", plan.window_s)
    while process.poll() is None:
        saved, failure = plan.handshake.saved_step(), plan.handshake.failure()
        if saved is not None:
            plan.saved_step = saved
            log.info("verl saved step %d %.1f s after the stop", saved, time.monotonic() - started)
            return
        if failure:
            plan.failure = failure
            log.warning("verl could not save before the stop: %s", failure)
            return
        if plan.abandon.wait(_HANDSHAKE_POLL_S):
            uploading = plan.handshake.uploading_step()
            busy = f"; the upload of step {uploading} was still running" if uploading is not None else ""
            plan.failure = f"the step in flight did not end with a checkpoint within {plan.window_s:.0f} s{busy}"
            log.warning("%s: stopping verl without it", plan.failure)
            return
    plan.saved_step = plan.handshake.saved_step()
    if plan.saved_step is None:
        plan.failure = f"verl exited (code {process.returncode}) before it saved"


def _group_gone(group: int, deadline: float) -> bool:
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)
