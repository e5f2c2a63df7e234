"""The `loka-operator` command line: settings come from flags and the environment, bad ones are refused."""

from __future__ import annotations

import pytest

from loka_operator.children import WORKLOAD
from loka_operator.config import (
    ENV_DISK_STORAGE_CLASS,
    ENV_HEAD_DISK,
    ENV_KUBERAY_NAMESPACE,
    ENV_RAY_VERSION,
    ENV_SUBMISSION_MODE,
    ENV_WORKER_DISK,
    ConfigError,
    OperatorConfig,
)
from loka_operator.handlers import child_selectors
from loka_operator.main import config_from, main, parse_args


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


@pytest.mark.parametrize("version", ["2.51.9", "latest", "2.60"])
def test_a_ray_version_without_token_auth_is_refused_naming_the_setting(
    version: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_RAY_VERSION, version)
    assert main(["--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"LOKA_RAY_VERSION={version!r}" in err
    assert "2.52.0 or newer" in err


def test_kuberay_namespace_and_ray_version_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_RAY_VERSION, raising=False)
    monkeypatch.delenv(ENV_KUBERAY_NAMESPACE, raising=False)
    defaults = OperatorConfig.from_env()
    assert (defaults.rayjob.ray_version, defaults.kuberay_namespace) == ("2.60.0", "default")
    monkeypatch.setenv(ENV_RAY_VERSION, "2.52.0")
    monkeypatch.setenv(ENV_KUBERAY_NAMESPACE, "ray-system")
    config = OperatorConfig.from_env()
    assert (config.rayjob.ray_version, config.kuberay_namespace) == ("2.52.0", "ray-system")


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


def test_only_workloads_labelled_with_their_run_are_watched_unless_asked_for_every_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_RAY_VERSION, raising=False)
    assert child_selectors(config_from(parse_args([])))[WORKLOAD] == "loka.dev/run"
    assert child_selectors(config_from(parse_args(["--workload-selector="])))[WORKLOAD] == ""


def test_the_operator_registers_no_handler_that_needs_kopfs_last_handled_copies() -> None:
    """The operator gives kopf no diff base (`handlers.NoDiffBase`): safe only while every handler of a watched kind
    is on.event. An on.create/on.update/on.delete handler or a daemon would see every change as new."""
    import kopf

    import loka_operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    watching = list(registry._watching.get_all_handlers())
    assert len(watching) >= 3  # runs, Evaluations and RewardCycles at least
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
