"""Another run's checkpoint as this run's starting model (``spec.model.fromRun``), staged as Hugging Face weights.

The checkpoint is restored like any other (every file verified against its manifest), without optimizer, scheduler,
RNG or dataloader state: a new run starts fresh from the weights. Then:

- a Hugging Face folder (what the trl engine saves, or verl's ``huggingface/`` when it saved ``hf_model``) is used
  as it is;
- verl's sharded FSDP checkpoint (``model_world_size_W_rank_R.pt`` + ``fsdp_config.json``) is merged by verl's own
  merger (``python -m verl.model_merger merge``).

Where in a checkpoint the model sits is the source run's recipe's to say (``Recipe.model_folders``: the step folder
for SFT, ``actor/`` for verl's PPO); the source's algorithm is not known here, so every recipe's folders are tried.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from loka_api.recipes import recipes
from loka_api.storage import ObjectStore
from loka_trainer.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
FSDP_CONFIG = "fsdp_config.json"
# Training state a new run does not start from: verl's optimizer/extra/dataloader state, TRL's optimizer, RNG, args.
TRAINING_STATE = re.compile(
    r"(^|/)(optim_world_size_[^/]*|extra_state_world_size_[^/]*|data_\d+\.pt|optimizer\.pt|scheduler\.pt"
    r"|rng_state[^/]*\.pth|training_args\.bin)$"
)
MERGE_TIMEOUT_S = 3600.0


class SourceModelError(ValueError):
    """The source checkpoint holds no weights Loka knows how to load."""


def is_weights(path: str) -> bool:
    return TRAINING_STATE.search(path) is None


def model_folders() -> tuple[str, ...]:
    """Where any recipe's checkpoint holds its model, relative to the step folder."""
    return tuple(dict.fromkeys(name for recipe in recipes() for name in recipe.model_folders))


def hf_folders() -> tuple[str, ...]:
    """Each model folder, and its huggingface/ subfolder (verl's config and tokenizer, or its hf_model)."""
    return tuple(candidate for name in model_folders() for candidate in (name, f"{name}/huggingface".lstrip("/")))


def hf_folder(root: Path) -> Path | None:
    """The folder holding a complete Hugging Face model (config and weights), if any."""
    for name in hf_folders():
        folder = root / name
        if (folder / HF_CONFIG).is_file() and any((folder / weights).is_file() for weights in HF_WEIGHTS):
            return folder
    return None


def fsdp_folder(root: Path) -> Path | None:
    """The folder holding verl's FSDP shards (with its ``huggingface/`` config and tokenizer), if any."""
    for name in model_folders():
        folder = root / name
        if (folder / FSDP_CONFIG).is_file() and any(folder.glob("model_world_size_*_rank_0.pt")):
            return folder
    return None


def merge_fsdp(shards: Path, dest: Path) -> None:
    """verl's merger, as verl documents it: FSDP shards -> a Hugging Face model in ``dest``."""
    argv = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    argv += ["--local_dir", str(shards), "--target_dir", str(dest)]
    log.info("merging verl FSDP shards of %s with verl.model_merger", shards)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=MERGE_TIMEOUT_S, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        msg = f"verl.model_merger could not merge {shards.name}: {' / '.join(tail)}"
        raise SourceModelError(msg)


def stage_checkpoint_as_model(
    uri: str, dest: Path, store: ObjectStore, *, cancel: threading.Event | None = None
) -> Path:
    """Restore the checkpoint at ``uri`` (``s3://…/global_step_N``) and leave Hugging Face weights in ``dest``."""
    source, step = CheckpointStore.for_checkpoint_uri(store, uri)
    download = dest.parent / f"{dest.name}.checkpoint"
    for stale in (download, dest):
        shutil.rmtree(stale, ignore_errors=True)
    folder = source.restore(step, download, cancel=cancel, only=is_weights)
    try:
        if (found := hf_folder(folder)) is not None:
            found.rename(dest)
            log.info("staged the Hugging Face weights of %s into %s", uri, dest)
        elif (shards := fsdp_folder(folder)) is not None:
            merge_fsdp(shards, dest)
            log.info("staged %s, merged from verl's FSDP shards, into %s", uri, dest)
        else:
            names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())[:8]
            msg = (
                f"spec.model.fromRun: checkpoint {uri} holds neither Hugging Face weights nor verl FSDP shards "
                f"(found {', '.join(names) or 'no files'}); Megatron checkpoints are not supported yet"
            )
            raise SourceModelError(msg)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return dest
