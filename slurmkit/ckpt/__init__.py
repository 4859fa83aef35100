"""Checkpoints that survive failures: triggered on failure or preemption, periodic
and asynchronous as a fallback, atomic on disk, verified on restore.

    from slurmkit.ckpt import Checkpointer

    ckpt = Checkpointer.from_env(periodic_steps=50)
    ckpt.register(lambda: {"weights": weights, "momentum": momentum})
    restored = ckpt.restore()           # newest valid checkpoint, or None
    for step in range(start, steps):
        grads = compute_and_allreduce()
        with ckpt.update(step + 1):     # the only window where the state is inconsistent
            apply(grads)
        ckpt.maybe_checkpoint()

PyTorch jobs (DDP, FSDP2; sharded state, peer replicas, resharding on restore):
``slurmkit.ckpt.torch_adapter.TorchCheckpointer`` (imports torch; not imported here).
"""

from slurmkit.ckpt.manager import EXIT_REQUEUE, Checkpointer, copy_snapshot, signal_number
from slurmkit.ckpt.store import CheckpointError, Restored, restore, write_checkpoint

__all__ = ["EXIT_REQUEUE", "CheckpointError", "Checkpointer", "Restored", "copy_snapshot",
           "restore", "signal_number", "write_checkpoint"]
