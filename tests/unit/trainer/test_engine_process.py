"""How the trainer treats verl's process and its secrets: stop on SIGTERM, W&B mode, redaction, Ray env types."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from loka_trainer.engines.verl import hydra_string, wait_or_stop
from loka_trainer.settings import redact, wandb_mode


def spawn(code: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", code]
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE)


def test_a_finished_process_returns_its_exit_code() -> None:
    assert wait_or_stop(spawn("raise SystemExit(3)"), threading.Event()) == 3


def test_stop_sends_sigterm_to_the_process_group() -> None:
    process = spawn("import time; time.sleep(60)")
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert wait_or_stop(process, stop, grace_s=10) == -15
    assert time.monotonic() - started < 5


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    process = spawn(
        "import signal, time, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its handler is installed
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert wait_or_stop(process, stop, grace_s=1) == -9
    assert time.monotonic() - started < 10


def test_wandb_is_online_only_with_a_key() -> None:
    assert wandb_mode("online", {"WANDB_API_KEY": "k" * 40}) == "online"
    assert wandb_mode("online", {}) == "offline"
    assert wandb_mode("offline", {"WANDB_API_KEY": "k" * 40}) == "offline"
    assert wandb_mode("disabled", {"WANDB_API_KEY": "k" * 40}) == "disabled"


def test_secret_values_are_redacted_from_messages() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "minio-secret-123", "WANDB_API_KEY": "wandb-key-456", "AWS_ACCESS_KEY_ID": "loka"}
    message = redact("upload failed: bad auth minio-secret-123 / wandb-key-456 for loka", env)
    assert "minio-secret-123" not in message
    assert "wandb-key-456" not in message
    assert "<AWS_SECRET_ACCESS_KEY>" in message
    assert message.endswith("for loka")  # the access key id is not a secret


def test_actor_env_values_reach_ray_as_strings() -> None:
    from omegaconf import OmegaConf
    from ray.runtime_env import RuntimeEnv

    from loka_api.render import compose_verl_config

    values = {"KEEP": "3", "Q": "it's", "D": 'a"b', "W": "C:\\dir\\", "E": "", "S": "s3://b/p,x=y"}
    overrides = [f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}={hydra_string(v)}" for k, v in values.items()]
    config = compose_verl_config(overrides)
    env_vars = OmegaConf.to_container(config.ray_kwargs.ray_init.runtime_env.env_vars)
    assert env_vars == values
    RuntimeEnv(env_vars=dict(env_vars))  # type: ignore[arg-type]  # Ray rejects anything but str -> str
