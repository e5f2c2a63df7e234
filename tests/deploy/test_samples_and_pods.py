"""Every TrainingRun Loka ships (console sample, gitops runs per overlay) is valid, and every pod
Loka asks for (operator, Ray head, Ray workers, submitter) passes restricted-v2."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from localcluster.tools import REPO
from loka_api import TrainingRunSpec
from loka_operator.builders.rayjob import SUBMISSION_MODES, RayJobSettings, build_rayjob
from tests.deploy.chart import CHART
from tests.deploy.gitops import OVERLAYS, kustomize
from tests.deploy.podsecurity import pod_specs, restricted_violations

Manifest = dict[str, Any]


def validate(run: Manifest) -> None:
    # OpenAPI v3.0 schemas use draft-4 keywords (boolean exclusiveMinimum).
    jsonschema.Draft4Validator(crd_schema()).validate(run)


def crd_schema() -> Manifest:
    crd = yaml.safe_load((REPO / "crds" / "trainingruns.loka.dev.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: Manifest = served["schema"]["openAPIV3Schema"]
    return schema


def shipped_runs() -> list[tuple[str, Manifest]]:
    runs = [("console-sample", yaml.safe_load((CHART / "files" / "trainingrun-sample.yaml").read_text()))]
    for overlay in OVERLAYS:
        runs += [
            (f"{overlay.name}/{m['metadata']['name']}", m) for m in kustomize(overlay) if m["kind"] == "TrainingRun"
        ]
    return runs


RUNS = shipped_runs()


@pytest.mark.parametrize(("where", "run"), RUNS, ids=[w for w, _ in RUNS])
def test_shipped_run_matches_the_crd_schema_and_the_operator_model(where: str, run: Manifest) -> None:
    validate(run)
    TrainingRunSpec.model_validate(run["spec"])


def test_schema_check_catches_a_broken_run() -> None:
    _, run = RUNS[0]
    broken = yaml.safe_load(yaml.safe_dump(run))
    broken["spec"]["resources"]["workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


@pytest.mark.parametrize("mode", SUBMISSION_MODES)
@pytest.mark.parametrize(("where", "run"), RUNS, ids=[w for w, _ in RUNS])
def test_every_ray_pod_the_operator_builds_passes_restricted_v2(where: str, run: Manifest, mode: str) -> None:
    spec = TrainingRunSpec.model_validate(run["spec"])
    rayjob = build_rayjob(
        spec, run=run["metadata"]["name"], namespace="loka", uid="0000", settings=RayJobSettings(submission_mode=mode)
    )
    checked = list(pod_specs(rayjob))
    assert len(checked) == (3 if mode == "K8sJobMode" else 2)
    for path, pod in checked:
        assert restricted_violations(pod, path) == []
