"""The `loka-operator` command line: settings come from flags and the environment, bad ones are refused."""

from __future__ import annotations

import pytest

from loka_operator.config import (
    ENV_DISK_STORAGE_CLASS,
    ENV_HEAD_DISK,
    ENV_SUBMISSION_MODE,
    ENV_WORKER_DISK,
    ConfigError,
    OperatorConfig,
)
from loka_operator.main import main


def test_unknown_submission_mode_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_SUBMISSION_MODE, "CarrierPigeonMode")
    assert main(["--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "LOKA_RAYJOB_SUBMISSION_MODE='CarrierPigeonMode'" in err
    assert "K8sJobMode" in err and "HTTPMode" in err


def test_submission_mode_defaults_to_k8s_job_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SUBMISSION_MODE, raising=False)
    assert OperatorConfig.from_env().rayjob.submission_mode == "K8sJobMode"
    monkeypatch.setenv(ENV_SUBMISSION_MODE, "HTTPMode")
    config = OperatorConfig.from_env(namespaces=("team-a",), metrics_port=0)
    assert config.rayjob.submission_mode == "HTTPMode"
    assert config.namespaces == ("team-a",)


def test_work_disk_defaults_come_from_the_environment_and_a_bad_size_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_HEAD_DISK, "50Gi")
    monkeypatch.setenv(ENV_WORKER_DISK, "2Ti")
    monkeypatch.setenv(ENV_DISK_STORAGE_CLASS, "fast-nvme")
    settings = OperatorConfig.from_env().rayjob
    assert (settings.head_disk, settings.worker_disk, settings.disk_storage_class) == ("50Gi", "2Ti", "fast-nvme")
    monkeypatch.setenv(ENV_WORKER_DISK, "a lot")
    with pytest.raises(ConfigError, match=r"LOKA_WORKER_DISK='a lot' is not a size; use a Kubernetes quantity"):
        OperatorConfig.from_env()
