"""SFT with `loka-trainer run` on CPU (TRL's SFTTrainer), and runs that start from another run's checkpoint: the
trainer stages the checkpoint status.source names as Hugging Face weights (merging verl's FSDP shards with verl's
own merger) and trains from those weights, not the base model's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loka_api.manifest import Writer
from loka_api.storage import ObjectStore, S3Uri
from loka_trainer.checkpoints import CheckpointStore
from loka_trainer.sft_data import demonstrations_to_conversations, read_conversations
from loka_trainer.source_model import SourceModelError, stage_checkpoint_as_model
from loka_trainer.tiny import write_sft_demonstrations
from tests.lineage_probe import response_logprob
from tests.trainer.conftest import (
    RUN_TIMEOUT_S,
    TrainerCase,
    create_run,
    read_run,
    run_spec,
    s3_env_values_absent,
    start_trainer,
    wait_for,
)


@pytest.fixture(scope="module")
def demonstrations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT demonstrations of the toy task (a chat prompt and its worked answer), split like the RL tasks."""
    root = tmp_path_factory.mktemp("sft")
    write_sft_demonstrations(root, 64)
    return root


def validation_conversations(demonstrations: Path, work: Path) -> list[list[dict[str, str]]]:
    converted = demonstrations_to_conversations(
        demonstrations / "validation.parquet", work / "probe.parquet", prompt_key="prompt", response_key="response",
        label="validation",
    )  # fmt: skip
    return read_conversations(converted, "messages")


def sft_spec(prefix: S3Uri, *, max_steps: int, every: int) -> dict[str, Any]:
    base = f"s3://{prefix.bucket}/{prefix.key}"
    return {
        "algorithm": "sft",
        "engine": "trl",
        "image": "loka:rl-train",
        "model": {"uri": f"{base}/model"},
        "data": {
            "train": f"{base}/sft/train.parquet",
            "validation": f"{base}/sft/validation.parquet",
            "promptKey": "prompt",
            "responseKey": "response",
            "maxPromptLength": 64,
            "maxResponseLength": 32,
        },
        "training": {"maxSteps": max_steps, "batchSize": 8, "learningRate": 1.0e-2},
        "resources": {"gpusPerWorker": 0},
        "checkpoints": {"uri": f"{base}/ckpt", "every": every, "keep": 2, "resume": "auto"},
    }


def run_trainer(case: TrainerCase, name: str) -> tuple[int, str]:
    log = case.work / f"{name}.log"
    trainer = start_trainer(case.env_for(name), case.work / "work", log)
    try:
        code = trainer.wait(timeout=RUN_TIMEOUT_S)
    finally:
        trainer.kill()
    return code, log.read_text(errors="replace")


def set_source(case: TrainerCase, name: str, source: dict[str, Any]) -> None:
    """What the operator writes before it launches a fromRun run (it owns status.source)."""
    from kubernetes import client

    client.CustomObjectsApi(case.k8s).patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", case.namespace, "trainingruns", name, {"status": {"source": source}}
    )


def source_run_checkpoints(case: TrainerCase, run: str) -> CheckpointStore:
    """A source run's checkpoints, keyed by its uid and claimed by its attempt, as its trainer writes them."""
    uid = f"uid-of-{run}"
    store = CheckpointStore(
        case.store, case.prefix.join(run, uid), keep=1, writer=Writer(1, f"{run}-attempt"), run_uid=uid
    )
    store.claim()
    return store


def create(case: TrainerCase, name: str, spec: dict[str, Any]) -> None:
    create_run(case.k8s, case.namespace, name, spec)


def test_sft_trains_on_demonstrations_reports_loss_and_validation_loss_and_stores_checkpoints(
    case: TrainerCase, demonstrations: Path
) -> None:
    case.store.upload_files(
        [(demonstrations / f, case.prefix.join("sft", f)) for f in ("train.parquet", "validation.parquet")]
    )
    create(case, "tiny-sft", sft_spec(case.prefix, max_steps=4, every=2))
    code, output = run_trainer(case, "tiny-sft")
    assert code == 0, output[-4000:]
    assert s3_env_values_absent(output)

    status = read_run(case.k8s, case.namespace, "tiny-sft")["status"]
    assert status["progress"] == {"step": 4, "totalSteps": 4, "epoch": 0, "attempt": 0, "resumedFrom": 0}
    metrics = status["metrics"]
    assert metrics["loss"] > 0
    assert metrics["validationLoss"] > 0 and metrics["validationStep"] == 4
    assert "rewardMean" not in metrics
    assert metrics["tokensPerSecond"] > 0
    store = case.checkpoints("tiny-sft")
    assert status["checkpoint"]["step"] == 4
    assert store.complete_steps() == [2, 4] and store.marker_step() == 4
    manifest = store.manifest(4)
    assert manifest is not None
    assert {"model.safetensors", "config.json", "optimizer.pt"} <= {f.path for f in manifest.files}


def test_a_grpo_run_from_an_sft_run_starts_from_the_sft_weights_not_the_base_model(
    case: TrainerCase, demonstrations: Path, tiny_inputs: Path
) -> None:
    case.store.upload_files(
        [(demonstrations / f, case.prefix.join("sft", f)) for f in ("train.parquet", "validation.parquet")]
    )
    create(case, "sft", sft_spec(case.prefix, max_steps=30, every=30))
    code, output = run_trainer(case, "sft")
    assert code == 0, output[-4000:]
    sft_checkpoint = case.checkpoints("sft")
    assert sft_checkpoint.marker_step() == 30

    grpo = run_spec(case.prefix, max_steps=2, every=1)
    grpo["model"] = {"fromRun": {"name": "sft"}}
    grpo["training"]["learningRate"] = 1.0e-7  # a nudge: the first checkpoint still holds the starting weights
    create(case, "grpo", grpo)
    uri = str(sft_checkpoint.step_uri(30))
    sft_uid = read_run(case.k8s, case.namespace, "sft")["metadata"]["uid"]
    assert f"/sft/{sft_uid}/" in uri  # checkpoints are keyed by the run's uid
    set_source(case, "grpo", {"run": "sft", "uid": sft_uid, "step": 30, "uri": uri})
    code, output = run_trainer(case, "grpo")
    assert code == 0, output[-4000:]
    status = read_run(case.k8s, case.namespace, "grpo")["status"]
    assert status["progress"]["step"] == 2
    assert status["source"]["uri"] == uri  # the trainer never rewrites the lineage
    # Validation reward before training (step 0, verl's val_before_train) and at every checkpoint.
    assert "validationRewardMean" in status["metrics"] and status["metrics"]["validationStep"] == 2

    probe = validation_conversations(demonstrations, case.work)
    restored = case.work / "restored"
    base = response_logprob(tiny_inputs / "model", probe)
    sft = response_logprob(sft_checkpoint.restore(30, restored), probe)
    staged = response_logprob(case.work / "work" / case.namespace / "grpo" / "model", probe)
    first = response_logprob(case.checkpoints("grpo").restore(1, restored), probe)
    print(f"log-prob per token: base {base:.3f}, SFT {sft:.3f}, staged {staged:.3f}, GRPO step 1 {first:.3f}")
    assert sft - base > 1.0, f"SFT should have learnt the demonstrations: base {base:.3f}, sft {sft:.3f}"
    assert staged == pytest.approx(sft, abs=1e-5), "the GRPO run staged exactly the SFT weights"
    assert first == pytest.approx(sft, abs=0.05), f"GRPO step 1 ({first:.3f}) continues SFT ({sft:.3f}), not base"
    assert abs(first - base) > 1.0


def test_a_missing_source_checkpoint_fails_the_run_naming_it(case: TrainerCase) -> None:
    spec = run_spec(case.prefix, max_steps=1, every=1)
    spec["model"] = {"fromRun": {"name": "gone", "checkpoint": "20"}}
    create(case, "orphan", spec)
    uri = f"s3://{case.prefix.bucket}/{case.prefix.key}/ckpt/{case.namespace}/gone/x/global_step_20"
    set_source(case, "orphan", {"run": "gone", "uid": "x", "step": 20, "uri": uri})
    code, output = run_trainer(case, "orphan")
    assert code == 1, output[-4000:]
    message = read_run(case.k8s, case.namespace, "orphan")["status"]["message"]
    assert f"checkpoint {uri} is incomplete" in message


def test_verls_sharded_fsdp_checkpoint_is_merged_into_the_weights_it_holds_with_verls_merger(
    case: TrainerCase, tiny_inputs: Path
) -> None:
    """verl's own FSDPCheckpointManager writes the shards (two gloo ranks on CPU); the staged model is what
    verl's merger makes of them: the same weights (bf16, as the merger writes them).
    """
    folder = case.work / "verl" / "global_step_1"
    subprocess.run(
        [sys.executable, "-m", "tests.trainer.verl_fsdp", str(tiny_inputs / "model"), str(folder)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (folder / "model_world_size_2_rank_1.pt").is_file() and not (
        folder / "huggingface/model.safetensors"
    ).exists()
    source = source_run_checkpoints(case, "verl-run")
    source.upload(1, folder)

    dest = stage_checkpoint_as_model(str(source.step_uri(1)), case.work / "model", case.store)
    assert (dest / "model.safetensors").is_file() and (dest / "tokenizer.json").is_file()
    assert not (case.work / "model.checkpoint").exists()  # the download is cleaned up
    probe = [[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "<answer>5</answer>"}]]
    assert response_logprob(dest, probe) == pytest.approx(response_logprob(tiny_inputs / "model", probe), abs=1e-3)


def test_a_checkpoint_without_weights_is_refused_with_what_it_holds(case: TrainerCase, tmp_path: Path) -> None:
    folder = tmp_path / "global_step_3"
    folder.mkdir()
    (folder / "notes.txt").write_text("no weights here")
    source = source_run_checkpoints(case, "odd-run")
    source.upload(3, folder)
    with pytest.raises(
        SourceModelError, match=r"holds neither Hugging Face weights nor verl FSDP shards \(found notes.txt\)"
    ):
        stage_checkpoint_as_model(str(source.step_uri(3)), tmp_path / "model", ObjectStore())


def test_an_interrupted_sft_run_resumes_from_its_last_checkpoint_on_a_fresh_disk(
    case: TrainerCase, demonstrations: Path
) -> None:
    case.store.upload_files(
        [(demonstrations / f, case.prefix.join("sft", f)) for f in ("train.parquet", "validation.parquet")]
    )
    create(case, "sft-resumed", sft_spec(case.prefix, max_steps=16, every=4))
    env, store, log = case.env_for("sft-resumed"), case.checkpoints("sft-resumed"), case.work / "resumed.log"
    case.operator_counts_attempt("sft-resumed", 1)
    first = start_trainer(env, case.work / "attempt-1", log)
    try:
        wait_for(lambda: (store.marker_step() or 0) >= 4 or first.poll() is not None, timeout=RUN_TIMEOUT_S,
                 what="a first checkpoint")  # fmt: skip
        assert first.poll() is None, log.read_text(errors="replace")[-4000:]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    finally:
        first.kill()
    stopped_at = store.marker_step()
    assert stopped_at is not None and stopped_at < 16

    case.operator_counts_attempt("sft-resumed", 2)
    second = start_trainer(env, case.work / "attempt-2", log)
    try:
        code = second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        second.kill()
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert f"resuming from checkpoint step {stopped_at}" in output
    holder = store.marker_state().writer
    assert holder is not None and holder.attempt == 2  # the marker is the second attempt's now
    status = read_run(case.k8s, case.namespace, "sft-resumed")["status"]
    assert status["progress"]["step"] == status["checkpoint"]["step"] == 16
    # The step saved on the stop, then every 4th step after it (the run's own interval, not the checkpoint's); keep 2.
    saves = [stopped_at, *(step for step in (4, 8, 12, 16) if step > stopped_at)]
    assert store.complete_steps() == saves[-2:]


def test_a_dependent_admitted_after_its_source_pruned_past_its_step_still_starts_from_it(case: TrainerCase) -> None:
    """A run waiting for Kueue with its source's step 2 recorded (status.source) while the source trains on and
    prunes to keep=1: the pin the operator put in the source's status.pins keeps step 2 until the dependent staged
    it. Without it, step 2 is gone when the dependent starts, and every retry fails the same way."""
    source = run_spec(case.prefix, max_steps=6, every=2)
    source["checkpoints"]["keep"] = 1
    create(case, "source", source)
    uid = read_run(case.k8s, case.namespace, "source")["metadata"]["uid"]
    dependent = run_spec(case.prefix, max_steps=1, every=1)
    dependent["model"] = {"fromRun": {"name": "source", "checkpoint": "2"}}
    create(case, "dependent", dependent)
    dependent_uid = read_run(case.k8s, case.namespace, "dependent")["metadata"]["uid"]
    uri = str(case.checkpoints("source").step_uri(2))
    # What the operator writes: the dependent's lineage, and the source's pin on it (before the source saves step 2).
    set_source(case, "dependent", {"run": "source", "uid": uid, "step": 2, "uri": uri})
    from kubernetes import client

    client.CustomObjectsApi(case.k8s).patch_namespaced_custom_object_status(
        "loka.dev", "v1alpha1", case.namespace, "trainingruns", "source",
        {"status": {"pins": [{"step": 2, "run": "dependent", "uid": dependent_uid}]}},
    )  # fmt: skip

    code, output = run_trainer(case, "source")
    assert code == 0, output[-4000:]
    kept = case.checkpoints("source")
    assert kept.marker_step() == 6
    assert kept.complete_steps() == [2, 6], "keep=1 pruned step 4, the pinned step 2 stays"
    assert kept.pinned_steps() == [2]

    code, output = run_trainer(case, "dependent")
    assert code == 0, output[-4000:]
    status = read_run(case.k8s, case.namespace, "dependent")["status"]
    assert status["progress"]["step"] == 1 and status["source"]["uri"] == uri

    # The operator drops the pin once the dependent has a checkpoint of its own: the next sync releases it.
    kept.sync_pins([])
    assert kept.pinned_steps() == []
