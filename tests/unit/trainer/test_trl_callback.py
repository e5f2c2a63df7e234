"""Loka's TRL callback against transformers' own TrainerState and TrainingArguments (no model, no cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from transformers import TrainerControl, TrainerState, TrainingArguments

from loka_trainer.engines import EngineJob
from loka_trainer.engines.trl import loka_callback
from loka_trainer.step_metrics import MetricsWriter


def test_a_run_resumed_from_another_runs_checkpoint_saves_and_validates_at_its_own_interval(tmp_path: Path) -> None:
    """transformers replaces the state with the checkpoint's trainer_state.json after computing this run's
    intervals: a run seeded from a checkpoint saved every 2 steps saved every 2 steps, not at its own every: 4."""
    job = cast("EngineJob", SimpleNamespace(spec=SimpleNamespace(checkpoints=SimpleNamespace(every=4))))
    callback: Any = loka_callback(job, MetricsWriter(tmp_path / "metrics.jsonl"), to_verl=lambda *a, **k: {}, samples=2)
    args = TrainingArguments(output_dir=str(tmp_path), save_steps=4, eval_steps=4, logging_steps=1, max_steps=8)
    seeded = TrainerState(max_steps=8, global_step=2, save_steps=2, eval_steps=2, logging_steps=1)  # the seed's

    callback.on_train_begin(args, seeded, TrainerControl())

    assert (seeded.save_steps, seeded.eval_steps, seeded.global_step) == (4, 4, 2)
