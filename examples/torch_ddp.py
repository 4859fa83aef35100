"""A DistributedDataParallel job that survives node loss (``slurmkit.ckpt``).

    torchrun --nnodes=4 --nproc-per-node=2 ... -m examples.torch_ddp --steps 60
    srun python3 -m examples.torch_ddp --steps 60       # env rendezvous

The loop is ``examples.torch_train``; the checkpoint integration is four lines there
(``TorchCheckpointer.from_env``, ``register``, ``restore``, ``with ckpt.update``).
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from examples.torch_train import train


def wrap(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def main(argv: list[str] | None = None) -> int:
    return train(argv, name="torch_ddp", wrap=wrap)


if __name__ == "__main__":
    sys.exit(main())
