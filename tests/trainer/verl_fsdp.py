"""A real verl FSDP checkpoint on CPU: ``python -m tests.trainer.verl_fsdp MODEL_DIR STEP_FOLDER [WORLD_SIZE]``.

Two gloo ranks shard a Hugging Face model with FSDP2 and save it with verl's own FSDPCheckpointManager, exactly as
verl's actor or SFT engine does on GPUs: ``model_world_size_W_rank_R.pt`` (DTensor shards), optimizer and extra
state per rank, ``fsdp_config.json`` and ``huggingface/`` (config and tokenizer, no weights).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, cast


def _save(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from omegaconf import OmegaConf
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    contents = ["model", "optimizer", "extra"]
    manager = FSDPCheckpointManager(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        lr_scheduler=None,
        processing_class=cast("Any", AutoTokenizer.from_pretrained(model_dir)),
        checkpoint_config=OmegaConf.create({"save_contents": contents, "load_contents": contents}),
    )
    manager.save_checkpoint(out, global_step=1)
    dist.destroy_process_group()


def main(argv: list[str]) -> None:
    from torch.multiprocessing.spawn import spawn

    model_dir, out = argv[0], argv[1]
    world = int(argv[2]) if len(argv) > 2 else 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spawn(_save, args=(world, port, model_dir, out), nprocs=world)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main(sys.argv[1:])
