"""How the trainer treats verl's process and its secrets: stop on SIGTERM, W&B mode, redaction, Ray env types."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from loka_api.render import hydra_string
from loka_trainer.engines.verl import pass_on_redacted, wait_or_stop
from loka_trainer.settings import redact, wandb_mode


def spawn(code: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", code]
    env = {**os.environ, "HF_TOKEN": "lokaleak-hf-9a8b7c"}
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, env=env)


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


SECRET_ENV_VALUES = {"AWS_SECRET_ACCESS_KEY": "lokaleak-s3-5f1e2d", "HF_TOKEN": "lokaleak-hf-9a8b7c",
                     "RAY_AUTH_TOKEN": "lokaleak-ray-3c4d5e"}  # fmt: skip


def test_everything_the_trainer_prints_is_redacted_tracebacks_included() -> None:
    code = (
        "import logging, os, sys\n"
        "from loka_trainer.settings import redact_process_output\n"
        "redact_process_output()\n"
        "logging.basicConfig()\n"
        "secret = os.environ['AWS_SECRET_ACCESS_KEY']\n"
        "print('print:', secret)\n"
        "sys.stdout.write('split:' + secret[:7]); sys.stdout.write(secret[7:] + '\\n')\n"
        "try:\n"
        "    raise ValueError('reward failed with ' + os.environ['HF_TOKEN'])\n"
        "except ValueError:\n"
        "    logging.exception('logged')\n"
        "raise RuntimeError('uncaught ' + os.environ['RAY_AUTH_TOKEN'])\n"
    )
    env = {**os.environ, **SECRET_ENV_VALUES}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert [value for value in SECRET_ENV_VALUES.values() if value in output] == []
    assert "print: <AWS_SECRET_ACCESS_KEY>" in output and "split:<AWS_SECRET_ACCESS_KEY>" in output
    assert "reward failed with <HF_TOKEN>" in output and "uncaught <RAY_AUTH_TOKEN>" in output


def test_verls_output_is_passed_on_line_by_line_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    process = spawn("import os; print('verl: cannot log in with', os.environ['HF_TOKEN']); print('done')")
    assert process.stdout is not None
    pass_on_redacted(process.stdout, SECRET_ENV_VALUES)
    process.wait()
    assert capsys.readouterr().out == "verl: cannot log in with <HF_TOKEN>\ndone\n"
