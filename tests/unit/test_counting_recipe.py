"""A new algorithm is one module: the toy ``count`` family (tests/counting_recipe.py), registered here and nowhere
else, goes through the CRD, the operator's validation and render, staging and the trl engine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_api.crd import build_crd
from loka_api.recipes import algorithms, register, unregister
from loka_api.render import StagedPaths, render_launch
from loka_api.storage import ObjectStore
from loka_operator.builders import RayJobSettings, build_rayjob
from loka_operator.validation import validate_spec
from loka_trainer.engines import EngineJob
from loka_trainer.engines.trl import TrlEngine
from loka_trainer.source_model import hf_folders
from loka_trainer.staging import parquet_rows, stage_inputs
from tests.counting_recipe import COUNTED, COUNTING


@pytest.fixture
def counting() -> Iterator[None]:
    register(COUNTING)
    yield
    unregister(COUNTING)


def counting_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "algorithm": "count",
        "engine": "trl",
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://acme/counter"},
        "data": {"train": "builtin://arithmetic"},
        "training": {"batchSize": 64, "epochs": 2},
        "resources": {"workers": 0, "gpusPerWorker": 0},
        "checkpoints": {"uri": "s3://ckpt/", "every": 8},
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def spec_rules() -> list[dict[str, str]]:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules: list[dict[str, str]] = schema["x-kubernetes-validations"]
    return rules


def test_an_algorithm_no_recipe_trains_is_refused() -> None:
    assert "count" not in algorithms()
    with pytest.raises(ValueError, match="'count' is not an algorithm"):
        counting_spec()


@pytest.mark.usefixtures("counting")
def test_the_crd_offers_the_new_algorithm_with_its_rules() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["algorithm"]["enum"][-1] == "count"
    assert "count (a toy that only counts steps)" in schema["properties"]["algorithm"]["description"]
    rules = {rule["message"]: rule["rule"] for rule in spec_rules()}
    assert (
        rules["algorithm count scores nothing: remove spec.reward"]
        == "self.algorithm != 'count' || (!has(self.reward))"
    )
    owned = next(rule for message, rule in rules.items() if message.startswith("trainer.total_training_steps is"))
    assert owned.startswith("!has(self.verlOverrides) || self.algorithm != 'count' || ")
    divisible = next(rule for rule in rules.values() if "% (self.resources.workers" in rule)
    # A batch of count splits over the GPUs item by item (only the RL family multiplies it by samplesPerPrompt).
    assert "'remax'] ? self.training.samplesPerPrompt : 1)" in divisible


@pytest.mark.usefixtures("counting")
def test_the_operator_validates_and_renders_the_new_algorithm() -> None:
    assert validate_spec(counting_spec()) is None
    gpu = {"workers": 1, "gpusPerWorker": 1}
    # engine verl: its overrides compose in the verl config it names; the keys it owns stay its own.
    assert validate_spec(counting_spec(engine="verl", resources=gpu)) is None
    problem = validate_spec(
        counting_spec(engine="verl", resources=gpu, verlOverrides=["trainer.total_training_steps=9"])
    )
    assert problem is not None
    assert "trainer.total_training_steps, which Loka sets itself: set spec.training.maxSteps" in problem.message
    paths = StagedPaths(model="/m", train_files=Path("/t.parquet"), checkpoint_dir=Path("/c"))
    launch = render_launch(counting_spec(), run_name="r", namespace="n", paths=paths)
    assert launch.entrypoint == "tests.counting_recipe"
    assert launch.arguments == [
        "data.train_files=/t.parquet",
        "trainer.total_training_steps=1",
        "trainer.experiment_name=r",
    ]
    job = build_rayjob(counting_spec(), run="r", namespace="n", uid="u", settings=RayJobSettings())
    assert job["spec"]["entrypoint"].startswith("loka-trainer run")


@pytest.mark.usefixtures("counting")
def test_the_trainer_stages_and_runs_the_new_algorithm_on_the_trl_engine(tmp_path: Path) -> None:
    spec = counting_spec()
    inputs = stage_inputs(spec, tmp_path, ObjectStore(endpoint_url="http://127.0.0.1:9"))
    engine = TrlEngine()
    job = EngineJob(
        spec=spec,
        run_name="count",
        namespace="test",
        inputs=inputs,
        work_dir=tmp_path,
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
        checkpoints=None,
        resume=None,
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode="disabled",
    )
    assert engine.run(job) == 0
    steps = [json.loads(line)["data"][COUNTED] for line in job.metrics_file.read_text().splitlines()]
    expected = parquet_rows(inputs.train_files) // 64 * 2  # builtin://arithmetic's rows over the batch, twice
    assert expected > 8
    assert steps == list(range(1, expected + 1))
    saved = sorted(int(p.name.removeprefix("step-")) for p in (job.checkpoint_dir / "counter").iterdir())
    assert saved == sorted({*range(8, expected + 1, 8), expected})
    # Its checkpoints hold their model under counter/: a run started from one looks there too.
    assert "counter" in hf_folders()
