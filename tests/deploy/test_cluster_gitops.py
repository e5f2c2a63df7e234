"""Every gitops overlay builds with `kubectl kustomize` and is accepted by the real API server,
Kueue's webhooks and the TrainingRun CRD in a server-side dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.gitops import OVERLAYS, kustomize
from tests.deploy.install import apply, ensure_crd

CLUSTER_SCOPED = {"Namespace", "ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}


def _wave(manifest: dict[str, Any]) -> int:
    return int(manifest["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_overlay_applies_in_a_server_side_dry_run(cluster: Any, namespace: str, overlay: Path) -> None:
    ensure_crd(cluster)
    manifests = kustomize(overlay)
    for manifest in manifests:
        # The overlay's `loka` namespace does not exist here: dry-run its namespaced objects in the test's.
        if manifest["kind"] not in CLUSTER_SCOPED:
            manifest["metadata"]["namespace"] = namespace
    done = apply(cluster, manifests, dry_run=True)
    assert done.returncode == 0, done.stderr
    applied = {line.split()[0] for line in done.stdout.splitlines() if "(server dry run)" in line}
    assert len(applied) == len(manifests)


def test_dry_run_refuses_a_broken_run(cluster: Any, namespace: str) -> None:
    ensure_crd(cluster)
    (run,) = [m for m in kustomize(OVERLAYS[0]) if m["kind"] == "TrainingRun"]
    run["metadata"]["namespace"] = namespace
    run["spec"]["resources"]["workers"] = -1
    done = apply(cluster, [run], dry_run=True)
    assert done.returncode != 0
    assert "spec.resources.workers" in done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_runs_sync_after_and_prune_before_the_queues(overlay: Path) -> None:
    manifests = kustomize(overlay)
    runs = [m for m in manifests if m["kind"] == "TrainingRun"]
    platform = [m for m in manifests if m["kind"] != "TrainingRun"]
    assert runs
    assert platform
    assert min(_wave(r) for r in runs) > max(_wave(p) for p in platform)
    for run in runs:
        options = run["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
        assert "SkipDryRunOnMissingResource=true" in options
