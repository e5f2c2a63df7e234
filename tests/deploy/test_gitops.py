"""The ArgoCD app of apps and the overlays, checked offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.tools import REPO
from tests.deploy.gitops import OVERLAYS, kustomize

ARGOCD = REPO / "gitops" / "argocd"
ENVS = [o.name for o in OVERLAYS]


def _apps(env: str) -> dict[str, dict[str, Any]]:
    apps = [yaml.safe_load(p.read_text()) for p in sorted((ARGOCD / "apps" / env).glob("*.yaml"))]
    return {a["metadata"]["name"].removesuffix(f"-{env}"): a for a in apps}


def _wave(app: dict[str, Any]) -> int:
    return int(app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_there_is_a_dev_and_a_prod_overlay() -> None:
    assert ENVS == ["dev", "prod"]


@pytest.mark.parametrize("env", ENVS)
def test_root_app_points_at_its_environments_apps(env: str) -> None:
    root = yaml.safe_load((ARGOCD / f"root-{env}.yaml").read_text())
    assert root["kind"] == "Application"
    assert (REPO / root["spec"]["source"]["path"]).resolve() == (ARGOCD / "apps" / env).resolve()


@pytest.mark.parametrize("env", ENVS)
def test_operator_syncs_before_and_is_pruned_after_the_runs(env: str) -> None:
    apps = _apps(env)
    assert set(apps) == {"loka-operator", "loka-training"}
    operator, training = apps["loka-operator"], apps["loka-training"]
    assert _wave(operator) < _wave(training)
    assert (REPO / operator["spec"]["source"]["path"] / "Chart.yaml").is_file()
    assert operator["spec"]["source"]["path"] == "charts/loka-operator"
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    assert (REPO / training["spec"]["source"]["path"]).resolve() == (REPO / "gitops" / "overlays" / env).resolve()
    assert "SkipDryRunOnMissingResource=true" in training["spec"]["syncPolicy"]["syncOptions"]
    for app in apps.values():
        # Deleting the app deletes what it synced: runs go (while kopf runs) before the operator does.
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]


@pytest.mark.parametrize("env", ENVS)
def test_operator_watches_the_namespace_the_runs_are_synced_into(env: str) -> None:
    apps = _apps(env)
    values = apps["loka-operator"]["spec"]["source"]["helm"]["valuesObject"]
    assert values.get("scope", "namespaced") == "namespaced"
    assert values["watchNamespaces"] == [apps["loka-training"]["spec"]["destination"]["namespace"]]


def _scale(env: str) -> tuple[dict[str, Any], dict[str, int]]:
    built = kustomize(REPO / "gitops" / "overlays" / env)
    (run,) = [m for m in built if m["kind"] == "TrainingRun"]
    (cq,) = [m for m in built if m["kind"] == "ClusterQueue"]
    quota = {r["name"]: r["nominalQuota"] for r in cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    return run["spec"]["resources"], {"gpus": int(quota["nvidia.com/gpu"])}


@pytest.mark.parametrize("env", ENVS)
def test_each_environments_quota_fits_its_run(env: str) -> None:
    resources, quota = _scale(env)
    assert resources["workers"] * resources["gpusPerWorker"] <= quota["gpus"]


def test_prod_is_scaled_up_from_dev() -> None:
    dev, prod = _scale("dev"), _scale("prod")
    assert prod[0]["workers"] > dev[0]["workers"]
    assert prod[0]["gpusPerWorker"] > dev[0]["gpusPerWorker"]
    assert prod[1]["gpus"] > dev[1]["gpus"]


@pytest.mark.parametrize("env", ENVS)
def test_scale_lives_in_the_one_patch_file(env: str) -> None:
    patch: Path = REPO / "gitops" / "overlays" / env / "patches" / "training-scale.yaml"
    kinds = {d["kind"] for d in yaml.safe_load_all(patch.read_text())}
    assert kinds == {"TrainingRun", "ClusterQueue"}
    kustomization = yaml.safe_load((patch.parent.parent / "kustomization.yaml").read_text())
    assert {"path": "patches/training-scale.yaml"} in kustomization["patches"]
