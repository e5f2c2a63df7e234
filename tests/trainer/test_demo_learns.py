"""`make demo` shows learning: the demo's run (examples/demo-run.yaml: reward, learning rate, steps, batch) on the
demo's model and data raises its mean reward. The trl engine on CPU, seeded; no cluster needed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from localcluster.demo import build_demo_assets, demo_manifest
from loka_api import TrainingRunSpec
from loka_trainer.engines import EngineJob
from loka_trainer.engines.trl import TrlEngine
from loka_trainer.staging import StagedInputs
from loka_trainer.step_metrics import REWARD_MEAN


def test_the_demo_run_raises_its_mean_reward_over_its_steps(tmp_path: Path) -> None:
    spec = TrainingRunSpec.model_validate(demo_manifest()["spec"]).model_copy(update={"checkpoints": None})
    assets = build_demo_assets(tmp_path / "assets")
    job = EngineJob(
        spec=spec,
        run_name="demo",
        namespace="test",
        inputs=StagedInputs(str(assets / "model"), assets / "data" / "train.parquet", None),
        work_dir=tmp_path,
        checkpoint_dir=tmp_path / "checkpoints",
        metrics_file=tmp_path / "metrics.jsonl",
        checkpoints=None,
        resume=None,
        on_checkpoint=lambda record: None,
        stop=threading.Event(),
        wandb_mode="disabled",
    )

    assert TrlEngine().run(job) == 0

    records = [json.loads(line) for line in job.metrics_file.read_text().splitlines()]
    rewards = [r["data"][REWARD_MEAN] for r in records if REWARD_MEAN in r["data"]]
    assert len(rewards) == spec.training.max_steps
    first, last = rewards[:4], rewards[-4:]
    # What the demo's summary shows as its reward curve: the last steps clearly above the first.
    assert sum(last) / 4 > sum(first) / 4 + 0.2, rewards
