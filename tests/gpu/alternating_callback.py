"""Loka's checkpoint callback on every other save, for timing runs (tests/gpu/qwen2-0.5b-timing.yaml).

The 1st, 3rd, ... saves and the last one go through Loka's S3CheckpointCallback; the others are verl's save
alone. One run then holds both sides of the comparison: verl's save time (a save with the callback off), Loka's
time inside the save (on minus off), and the steps that run while an upload is in the background (after an on
save) against those that run with none (after an off save). Each save prints one JSON line to the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from loka_trainer.verl_callback import S3CheckpointCallback

TAG = "loka_bench_save"


class AlternatingS3CheckpointCallback(S3CheckpointCallback):
    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)
        self.saves = 0
        # Ray workers log at WARNING: show the callback's own upload timings in the driver's log.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("loka_trainer")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def on_save(
        self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any
    ) -> None:
        self.saves += 1
        last = trainer is None or global_step >= int(getattr(trainer, "total_training_steps", global_step))
        on = self.saves % 2 == 1 or last
        started = time.monotonic()
        if on:
            super().on_save(trainer, global_step, checkpoint_dir, async_save=async_save, **kwargs)
        record = {TAG: global_step, "callback": on, "last": last, "in_save_s": round(time.monotonic() - started, 3)}
        print(json.dumps(record), flush=True)
