"""Render the loka-operator chart with helm and index what comes out."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.tools import REPO, ensure_helm, load_manifests

CHART = REPO / "charts" / "loka-operator"
VALUE_SETS = CHART / "ci"
OPENSHIFT_APIS = ("console.openshift.io/v1/ConsoleYAMLSample", "monitoring.coreos.com/v1/ServiceMonitor")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}


def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ensure_helm()), *map(str, args)], capture_output=True, text=True, check=False)


def render(
    *,
    values: Path | None = None,
    sets: dict[str, str] | None = None,
    api_versions: tuple[str, ...] = (),
    namespace: str = "loka-system",
    release: str = "loka",
    include_crds: bool = False,
) -> Rendered:
    args: list[str | Path] = ["template", release, CHART, "--namespace", namespace]
    if values is not None:
        args += ["--values", values]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for api in api_versions:
        args += ["--api-versions", api]
    if include_crds:
        args.append("--include-crds")
    done = helm(*args)
    if done.returncode != 0:
        raise ChartError(done.stderr)
    return Rendered(load_manifests(done.stdout))


class ChartError(Exception):
    """helm refused to render: the message is helm's stderr."""
