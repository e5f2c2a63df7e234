"""pytest plugin: run the operator integration tests with the operator process authenticated as the
chart's ServiceAccount instead of the cluster admin.

    LOKA_OPERATOR_KUBECONFIG=<kubeconfig with the SA's token> pytest tests/operator -p tests.deploy.chart_identity

Only the operator subprocess changes identity; the tests themselves still set up and inspect as admin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ENV = "LOKA_OPERATOR_KUBECONFIG"
# Each operator start appends a line here, so the caller can tell the swap really happened.
STARTS_ENV = "LOKA_OPERATOR_STARTS_FILE"


class _ClusterAs:
    """The test cluster, except that the environment it hands the operator names another kubeconfig."""

    def __init__(self, cluster: Any, kubeconfig: str) -> None:
        self._cluster = cluster
        self._kubeconfig = kubeconfig

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster, name)

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {**self._cluster.env, "KUBECONFIG": self._kubeconfig}
        return env


def pytest_configure(config: pytest.Config) -> None:
    kubeconfig = os.environ.get(ENV)
    if not kubeconfig:
        raise pytest.UsageError(f"{ENV} must name the chart ServiceAccount's kubeconfig")
    from localcluster.operator_process import OperatorProcess

    original = OperatorProcess.start

    def start_as_chart_identity(self: Any) -> None:
        if not isinstance(self.cluster, _ClusterAs):
            self.cluster = _ClusterAs(self.cluster, kubeconfig)
        starts = os.environ.get(STARTS_ENV)
        if starts:
            with Path(starts).open("a") as record:
                record.write(f"{self.cluster.env['KUBECONFIG']}\n")
        original(self)

    OperatorProcess.start = start_as_chart_identity  # type: ignore[method-assign]
