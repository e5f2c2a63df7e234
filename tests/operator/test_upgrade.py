"""An upgraded operator takes over runs the previous one launched: it never fails them by validating again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

from localcluster.controlplane import LocalCluster
from localcluster.operator_process import OperatorProcess
from loka_api import TrainingRunSpec
from loka_operator.builders import RayJobSettings, build_rayjob
from loka_operator.validation import validate_spec
from tests.operator.conftest import drive_rayjob, eventually, fresh_namespace, run_manifest, wait_phase
from tests.operator.kube import Kube

RUN = "qwen"


def test_an_upgraded_operator_never_fails_a_run_that_already_launched(
    cluster: LocalCluster, crd: None, kube: Kube, tmp_path: Path
) -> None:
    prefix = f"lokaup-{uuid.uuid4().hex[:4]}-"
    namespaces: Iterator[str] = fresh_namespace(kube, prefix)
    ns = next(namespaces)
    try:
        # An override the verl config of an older operator knew and today's does not: validation now rejects it.
        manifest = run_manifest(RUN, ns, verlOverrides=["trainer.retired_option=3"])
        run = kube.create_run(manifest)
        spec = TrainingRunSpec.model_validate(run["spec"])
        assert validate_spec(spec) is not None

        # What the previous operator left behind: the RayJob it launched and the status it wrote.
        rayjob = build_rayjob(
            spec, run=RUN, namespace=ns, uid=run["metadata"]["uid"], settings=RayJobSettings("HTTPMode")
        )
        kube.custom.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", rayjob)
        valid = {"type": "Valid", "status": "True", "reason": "Validated", "message": "valid"}
        valid["lastTransitionTime"] = "2026-01-01T00:00:00Z"
        kube.patch_run_status(
            ns, RUN, {"phase": "Starting", "attempt": 1, "rayJob": RUN, "observedGeneration": 1, "conditions": [valid]}
        )

        upgraded = OperatorProcess(cluster, tmp_path / "upgraded.log", namespace_prefix=prefix)
        upgraded.start()
        try:
            status = eventually(
                lambda: (s := kube.status(ns, RUN)).get("phase") in ("Running", "Failed") and s,
                timeout=120,
                what="the upgraded operator to follow the run",
            )
            assert status["phase"] == "Running", status.get("message")
            assert kube.condition(ns, RUN, "Valid")["status"] == "True"
            # ... and to its end.
            drive_rayjob(kube, ns, RUN, "Complete", "SUCCEEDED")
            wait_phase(kube, ns, RUN, "Succeeded")
        finally:
            upgraded.stop()
    finally:
        next(namespaces, None)
