"""A toy algorithm family, ``count``, that only counts steps: everything a new algorithm brings to Loka, in one module.

It is what a developer adds for a new algorithm (its spec rules, verl entry point and overrides, the keys it owns,
its data, where its model sits in a checkpoint, its trl trainer), and nothing else in the tree knows about it:
``tests/unit/test_counting_recipe.py`` registers it and runs it through the CRD, the operator's validation and
render, staging and the trl engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from loka_api.recipes import DataFormat, OwnedKey, Recipe, SpecRule, StagedPaths

if TYPE_CHECKING:
    from loka_api import TrainingRunSpec
    from loka_trainer.engines import EngineJob
    from loka_trainer.step_metrics import MetricsWriter

COUNTED = "count/steps"  # the metric it logs each step


class CountingRecipe(Recipe):
    name = "count"
    algorithms = ("count",)
    summary = "count (a toy that only counts steps)"
    rules = (SpecRule("!has(self.reward)", "algorithm count scores nothing: remove spec.reward", ".reward"),)
    sequences_per_item = "1"
    entrypoint = "tests.counting_recipe"
    config_name = "ppo_trainer"
    owned_keys = (OwnedKey("trainer.total_training_steps", "set spec.training.maxSteps instead"),)
    data_format = DataFormat.PROMPTS
    model_folders = ("counter",)
    trl_trainer = "tests.counting_recipe:build_counter"

    def overrides(self, spec: TrainingRunSpec, *, run_name: str, namespace: str, paths: StagedPaths) -> list[str]:
        del namespace
        return [
            f"data.train_files={paths.train_files}",
            f"trainer.total_training_steps={spec.training.max_steps or 1}",
            f"trainer.experiment_name={run_name}",
        ]


COUNTING = CountingRecipe()


class Counter:
    """A trainer with TRL's interface that counts its steps into verl's metrics file and checkpoints the count."""

    eval_dataset = None

    def __init__(self, job: EngineJob, writer: MetricsWriter) -> None:
        import pyarrow.parquet as pq

        self.job, self.writer = job, writer
        rows: int = pq.ParquetFile(job.inputs.train_files).metadata.num_rows
        training = job.spec.training
        self.steps = training.max_steps or rows // training.batch_size * training.epochs

    def evaluate(self) -> None:
        raise AssertionError("count validates nothing")

    def train(self, resume_from_checkpoint: str | None = None) -> None:
        start = json.loads((Path(resume_from_checkpoint) / "count.json").read_text()) if resume_from_checkpoint else 0
        every = self.job.spec.checkpoints.every if self.job.spec.checkpoints else 0
        for step in range(start + 1, self.steps + 1):
            if self.job.stop.is_set():
                return
            self.writer.log(step, {"training/global_step": step, COUNTED: step})
            if every and (step % every == 0 or step == self.steps):
                folder = self.job.checkpoint_dir / "counter" / f"step-{step}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "count.json").write_text(json.dumps(step))


def build_counter(job: EngineJob, writer: MetricsWriter) -> Counter:
    return Counter(job, writer)
