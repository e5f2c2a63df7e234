"""``python -m loka_trainer.verl_sft <overrides>``: verl's SFT trainer on the run's Ray cluster, each checkpoint
uploaded to S3 (files, manifest, then marker) as soon as verl has written it.

Why ``verl.trainer.sft_trainer_ray`` (single controller) rather than ``sft_trainer`` under torchrun: a run is one
KubeRay RayJob whose entrypoint starts once, on the head. The Ray trainer places its ``nnodes x n_gpus_per_node``
workers through a Ray resource pool, as ``main_ppo`` does, so SFT uses the same RayJob, Kueue admission, per-node
staging, per-node checkpoint upload and metrics file as GRPO. torchrun would need one launcher per Ray node and a
rendezvous we would have to build. Both trainers use the same TrainingWorker engine and checkpoint format (verl's
CI compares them), so verl's model merger reads what either writes.

verl's SFT trainer has no ``trainer.checkpoint_callback_class``; its CheckpointHandler is the one place that knows
a checkpoint was written, so this module wraps it and calls the same callback main_ppo calls: the same attempt's
writer (fenced marker writes), the same hard-linked snapshot uploaded in the background while training goes on,
the last step's checkpoint uploaded before the save returns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

from loka_api.contract import step_folder
from loka_api.recipes.sft import SFT
from loka_api.render import verl_config_dir

log = logging.getLogger(__name__)


class UploadingCheckpointHandler:
    """verl's CheckpointHandler, with the S3 upload (``S3CheckpointCallback.on_save``) after each save."""

    def __init__(self, inner: Any, callback: Any, trainer: Any) -> None:
        self.inner = inner
        self.callback = callback
        self.trainer = trainer

    def save_checkpoint(self, step: int) -> None:
        self.inner.save_checkpoint(step)
        folder = Path(self.inner.default_local_dir) / step_folder(step)
        self.callback.on_save(self.trainer, global_step=step, checkpoint_dir=str(folder))

    def load_checkpoint(self) -> int:
        step: int = self.inner.load_checkpoint()
        return step

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def build_trainer(config: Any) -> Any:
    """verl's Ray SFT trainer whose checkpoint handler also uploads."""
    from verl.trainer.sft_trainer_ray import SFTTrainer

    from loka_trainer.verl_callback import S3CheckpointCallback

    class LokaSFTTrainer(SFTTrainer):
        def _build_ckpt_handler(self) -> None:
            super()._build_ckpt_handler()  # type: ignore[no-untyped-call]
            self.loka_callback = S3CheckpointCallback(config)
            self.ckpt_handler = cast("Any", UploadingCheckpointHandler(self.ckpt_handler, self.loka_callback, self))

        def fit(self) -> None:
            super().fit()  # type: ignore[no-untyped-call]
            # The last save uploads before it returns; an upload still in flight here (verl ended without its last
            # step's save) must land, or fail this process, before the driver exits.
            self.loka_callback.wait_for_upload()

    return LokaSFTTrainer(config=config)  # type: ignore[no-untyped-call]


def run(config: Any) -> None:
    import ray
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    ray.init()  # a RayJob's entrypoint joins its cluster
    build_trainer(config).fit()


def main() -> None:
    import hydra

    # verl's own config and defaults: the renderer composed the same overrides against it before launch.
    entry = hydra.main(config_path=str(verl_config_dir()), config_name=SFT.config_name, version_base=None)
    entry(run)()


if __name__ == "__main__":
    main()
