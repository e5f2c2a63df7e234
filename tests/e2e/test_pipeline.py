"""End to end: an SFT run and a GRPO run chained by spec.model.fromRun, through the operator, Kueue, KubeRay, a real
Ray and the trainer (both on CPU with TRL). The GRPO run waits while the SFT run trains, then starts from the SFT
run's final checkpoint; its weights prove it: what they predict matches the SFT checkpoint, not the base model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.demo import pipeline_manifests
from localcluster.stack import DemoStack
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.sft_data import demonstrations_to_conversations, read_conversations
from tests.e2e.test_training_runs import apply, condition
from tests.lineage_probe import response_logprob

SFT_STEPS = 30


def e2e_pipeline(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo pipeline, pointed at the e2e model and data, sized for one e2e queue (4 CPUs)."""
    sft, grpo = (copy.deepcopy(m) for m in pipeline_manifests())
    for manifest in (sft, grpo):
        manifest["metadata"]["namespace"] = namespace
        spec = manifest["spec"]
        spec["resources"] = {"workers": 1, "gpusPerWorker": 0, "head": {"cpu": "1", "memory": "2Gi"},
                             "worker": {"cpu": "2", "memory": "2Gi"}}  # fmt: skip
        spec["queue"] = {"name": "e2e", "clusterQueue": namespace}
        for key in ("train", "validation"):
            spec["data"][key] = spec["data"][key].replace("s3://loka/demo/", "s3://loka/e2e/")
    sft["spec"]["model"]["uri"] = "s3://loka/e2e/model"
    sft["spec"]["training"]["maxSteps"] = SFT_STEPS
    sft["spec"]["checkpoints"]["every"] = SFT_STEPS // 2
    # A nudge of a learning rate, a checkpoint after every step: the first one still holds the starting weights.
    grpo["spec"]["training"].update(maxSteps=2, learningRate=1.0e-7)
    grpo["spec"]["checkpoints"]["every"] = 1
    return sft, grpo


@pytest.fixture
def object_store(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    for key, value in cluster.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return ObjectStore()


def test_a_grpo_run_waits_for_an_sft_run_and_trains_from_its_final_weights(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, object_store: ObjectStore, tmp_path: Path
) -> None:
    sft_manifest, grpo_manifest = e2e_pipeline(e2e_namespace)
    sft = apply(cluster, sft_manifest)
    grpo = apply(cluster, grpo_manifest)

    def waits_while_sft_runs(status: dict[str, Any]) -> bool:
        # The source's own phase in the message follows within the operator's settle time (a change of words
        # alone is not written at once), which a fast SFT run can beat: waiting, and for which run, is the point.
        ready = condition(status, "SourceReady")
        return ready.get("reason") == "WaitingForSource" and "demo-sft" in ready.get("message", "")

    waiting = grpo.until(waits_while_sft_runs, timeout=300, what="the GRPO run to wait while the SFT run trains")
    assert waiting["phase"] == "Pending"
    assert "run 'demo-sft'" in condition(waiting, "SourceReady")["message"]
    assert not waiting.get("rayJob"), "nothing launches before the source's checkpoint exists"

    sft_final = sft.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the SFT run to succeed")
    assert sft_final["progress"]["step"] == SFT_STEPS
    assert sft_final["metrics"]["loss"] > 0 and sft_final["metrics"]["validationLoss"] > 0
    assert sft_final["checkpoint"]["step"] == SFT_STEPS

    final = grpo.until(lambda s: s.get("phase") == "Succeeded", timeout=600, what="the GRPO run to succeed")
    sft_uid = json.loads(cluster.kubectl("-n", e2e_namespace, "get", "tr", "demo-sft", "-o", "json").stdout)[
        "metadata"
    ]["uid"]
    assert final["source"] == {
        "run": "demo-sft",
        "uid": sft_uid,
        "step": SFT_STEPS,
        "uri": sft_final["checkpoint"]["uri"],
    }
    assert condition(final, "SourceReady")["status"] == "True"
    assert final["progress"]["step"] == 2
    metrics_file = stack.work_dir / e2e_namespace / "demo-grpo" / "metrics.jsonl"
    steps_validated = [
        r["step"] for r in map(json.loads, metrics_file.read_text().splitlines()) if "val-core" in str(r)
    ]
    assert steps_validated[:1] == [0], "validation reward of the starting weights, before the first step"

    # The proof: the log-probabilities of the held-out demonstrations under each set of weights.
    assets = stack.layout.root / "assets"
    probe = read_conversations(
        demonstrations_to_conversations(
            assets / "sft" / "validation.parquet", tmp_path / "probe.parquet", prompt_key="prompt",
            response_key="response", label="validation",
        ),
        "messages",
    )  # fmt: skip
    sft_uri = S3Uri.parse(final["source"]["uri"])
    sft_store = CheckpointStore(object_store, S3Uri(sft_uri.bucket, sft_uri.key.rsplit("/", 1)[0]), keep=2)
    grpo_uri = S3Uri.parse(final["checkpoint"]["uri"])
    grpo_store = CheckpointStore(object_store, S3Uri(grpo_uri.bucket, grpo_uri.key.rsplit("/", 1)[0]), keep=2)
    base = response_logprob(assets / "model", probe)
    trained = response_logprob(sft_store.restore(SFT_STEPS, tmp_path / "sft"), probe)
    staged = response_logprob(stack.work_dir / e2e_namespace / "demo-grpo" / "model", probe)
    first_step = response_logprob(grpo_store.restore(1, tmp_path / "grpo"), probe)
    print(f"log-prob per token: base {base:.3f}, SFT {trained:.3f}, staged {staged:.3f}, GRPO step 1 {first_step:.3f}")
    assert trained - base > 1.0, "SFT learnt the demonstrations"
    assert staged == pytest.approx(trained, abs=1e-5), "the GRPO run loaded exactly the SFT weights"
    assert first_step == pytest.approx(trained, abs=0.05), "its first step started from them, not the base model"

    # The lineage is the GRPO run's own record: it outlives the SFT run.
    cluster.kubectl("-n", e2e_namespace, "delete", "trainingrun", "demo-sft", "--wait=true", "--timeout=120s")
    assert grpo.status()["source"] == final["source"]
