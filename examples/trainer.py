"""A deterministic multi-node data-parallel trainer that survives node loss.

Linear regression on a synthetic data set (every sample generated from its index),
trained with SGD + momentum. Each step: every rank computes per-sample gradients for
its share of the global batch (``layout.grad_accum`` micro-batches), rank 0 gathers
them, sums them *in sample order* and broadcasts the sum. Because the sum never
depends on which rank computed what, the final weights are bit-for-bit the same
whatever the number of ranks: a run that lost a node and finished on fewer nodes
ends exactly where a fault-free run does.

Failures: a lost peer (``PeerLost``) or a signal (SIGTERM, the warning signal) makes
the survivors write a triggered checkpoint of the last completed step and exit with
85; the job script requeues the job; the next run re-plans the layout for its
size (``slurmkit.plan``) and resumes from the checkpoint.

    srun python3 -m examples.trainer --steps 120
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np

from examples.collectives import Hub, PeerLost
from slurmkit.ckpt import Checkpointer
from slurmkit.plan import plan

DATASET = 1 << 20


def sample(index: int, dim: int, true_weights: np.ndarray) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(index)
    x = rng.standard_normal(dim)
    return x, float(x @ true_weights + 0.01 * rng.standard_normal())


def batch_ids(step: int, global_batch: int) -> np.ndarray:
    """The global batch of ``step``: a fixed pseudo-random walk over the data set."""
    start = (step * global_batch * 7919) % DATASET
    return (start + np.arange(global_batch) * 104729) % DATASET


def weights_digest(weights: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.trainer")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--global-batch", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--step-seconds", type=float, default=0.25,
                        help="simulated compute per step (the model itself is tiny)")
    parser.add_argument("--periodic-steps", type=int, default=20,
                        help="periodic async checkpoint interval (0: none)")
    parser.add_argument("--no-triggered", action="store_true",
                        help="periodic checkpoints only (the baseline of the campaign)")
    parser.add_argument("--collective-timeout", type=float, default=10.0)
    parser.add_argument("--state-mb", type=float, default=0.0,
                        help="extra checkpointed state (MB), to make checkpoint writes "
                             "take a while (the fault campaign crashes nodes mid-write)")
    parser.add_argument("--result", type=Path, default=None,
                        help="rank 0 writes the final weights here (.npy)")
    args = parser.parse_args(argv)

    env = os.environ
    rank, world = int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_NTASKS", 1))
    run = int(env.get("SLURM_RESTART_COUNT", 0) or 0)
    ranks_per_node = max(1, world // max(1, int(env.get("SLURM_NNODES", 1))))
    master = env.get("MASTER_ADDR", "127.0.0.1")
    attempt = int(env.get("SLURMKIT_ATTEMPT", 0) or 0)
    # A fresh port per run (requeue); slurmkit.launch hands each attempt its own.
    port = int(env.get("MASTER_PORT", "29500")) + (0 if "SLURMKIT_ATTEMPT" in env
                                                   else run % 1000)

    def say(text: str) -> None:
        if rank == 0:
            print(f"trainer: run {run} {text} t={time.time():.3f}", flush=True)

    # The Checkpointer first: it installs the signal handlers before other threads.
    ckpt = Checkpointer.from_env(periodic_steps=args.periodic_steps or None,
                                 triggered=not args.no_triggered, keep=3)
    layout = plan(world, gpus_per_node=ranks_per_node, model_gb=args.dim * 16 / 1e9,
                  gpu_memory_gb=1.0, global_batch=args.global_batch,
                  micro_batch=args.micro_batch)
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", socket.gethostname())
    say(f"start attempt={attempt} ranks={world} nodes={nodes} "
        f"layout tp={layout.tp} pp={layout.pp} dp={layout.dp} "
        f"grad_accum={layout.grad_accum} micro_batch={layout.micro_batch}")
    if rank == 0:
        ckpt.event("run-start", ranks=world, layout=layout.to_dict())

    true_weights = np.random.default_rng(12345).standard_normal(args.dim)
    weights = np.zeros(args.dim)
    velocity = np.zeros(args.dim)
    padding = np.zeros(int(args.state_mb * (1 << 20)) // 8)  # stands for a bigger model
    ckpt.register(lambda: {"weights": weights, "velocity": velocity, "padding": padding},
                  lambda: {"global_batch": args.global_batch, "lr": args.lr,
                           "layout": layout.to_dict()})

    try:
        hub = Hub(rank, world, master, port, timeout_s=args.collective_timeout)
        # Rank 0 chooses the checkpoint; everyone restores that same one.
        if rank == 0:
            restored = ckpt.restore()
            chosen = restored.step if restored else -1
        raw = hub.broadcast(struct.pack("!q", chosen) if rank == 0 else None)
        (chosen,) = struct.unpack("!q", raw)
        if chosen >= 0:
            if rank != 0:
                restored = ckpt.restore(step=chosen)
            weights[:] = restored.values["weights"]
            velocity[:] = restored.values["velocity"]
            say(f"restored step {chosen} ({restored.manifest.get('kind')}) from "
                f"{restored.path.name}")
        start = max(chosen, 0)
        if start >= args.steps:
            say(f"already complete at step {start}")
            return 0
        ckpt.completed(start)

        per_rank = layout.grad_accum * layout.micro_batch
        for step in range(start, args.steps):
            ids = batch_ids(step, args.global_batch)[rank * per_rank:(rank + 1) * per_rank]
            grads = np.empty((len(ids), args.dim))
            residuals = np.empty(len(ids))
            for row, index in enumerate(ids):
                x, y = sample(int(index), args.dim, true_weights)
                residuals[row] = x @ weights - y
                grads[row] = 2.0 * residuals[row] * x
            time.sleep(args.step_seconds)  # the rest of a real model's forward/backward
            payload = struct.pack("!I", len(ids)) + ids.astype(np.int64).tobytes() \
                + grads.tobytes() + residuals.tobytes()
            parts = hub.gather(payload)
            if rank == 0:
                all_ids, all_grads, all_residuals = [], [], []
                for part in parts:
                    (count,) = struct.unpack("!I", part[:4])
                    offset = 4
                    all_ids.append(np.frombuffer(part[offset:offset + 8 * count], np.int64))
                    offset += 8 * count
                    all_grads.append(np.frombuffer(part[offset:offset + 8 * count * args.dim],
                                                   np.float64).reshape(count, args.dim))
                    offset += 8 * count * args.dim
                    all_residuals.append(np.frombuffer(part[offset:], np.float64))
                order = np.argsort(np.concatenate(all_ids), kind="stable")
                total = np.concatenate(all_grads)[order].sum(axis=0) / args.global_batch
                loss = float(np.mean(np.concatenate(all_residuals)[order] ** 2))
                message = total.tobytes() + struct.pack("!d", loss)
            else:
                message = None
            message = hub.broadcast(message)
            gradient = np.frombuffer(message[:-8], np.float64)
            (loss,) = struct.unpack("!d", message[-8:])
            with ckpt.update(step + 1):
                velocity *= args.momentum
                velocity += gradient
                weights -= args.lr * velocity
            say(f"step {step + 1} loss {loss:.6f}")
            if rank == 0:
                ckpt.event("step", step=step + 1, loss=loss)
            ckpt.maybe_checkpoint()
        if rank == 0:
            ckpt.checkpoint("final")
            if args.result:
                args.result.parent.mkdir(parents=True, exist_ok=True)
                np.save(args.result, weights)
        hub.gather(b"done")  # every rank reached the end before anyone exits
        hub.broadcast(b"bye" if rank == 0 else None)
        say(f"done step {args.steps} weights_sha256 {weights_digest(weights)}")
        hub.close()
        ckpt.close()
        return 0
    except PeerLost as error:
        ckpt.trigger(f"peer lost: {error}")
        return 85  # not reached: trigger exits


if __name__ == "__main__":
    sys.exit(main())
