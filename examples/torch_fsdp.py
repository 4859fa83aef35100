"""An FSDP2 (``fully_shard``) job that survives node loss: every rank holds a
different shard of the weights and optimizer state; each shard is replicated to a
rank on another node between steps, so the survivors of a node loss still hold them
all (``slurmkit.ckpt.torch_adapter``).

    torchrun --nnodes=4 --nproc-per-node=2 ... -m examples.torch_fsdp --steps 60
    srun python3 -m examples.torch_fsdp --steps 60 [--no-replication]
"""

import sys

import torch
from torch.distributed.device_mesh import init_device_mesh

from examples.torch_train import fsdp2_cpu_shim, train


def wrap(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (world,))
    # On CPU (torch 2.6) parameters stay gathered from forward to backward: resharding
    # after forward re-gathers them in backward into memory autograd still reads.
    options = {"mesh": mesh, "reshard_after_forward": device.type == "cuda"}
    if device.type == "cpu":
        fsdp2_cpu_shim()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **options)
    return fully_shard(model, **options)


def main(argv: list[str] | None = None) -> int:
    return train(argv, name="torch_fsdp", wrap=wrap)


if __name__ == "__main__":
    sys.exit(main())
