"""The PyTorch training loop of ``examples.torch_ddp`` and ``examples.torch_fsdp``.

A multi-layer perceptron (about 2.2 million parameters) learns a fixed random
teacher on generated data: sample ``i`` is drawn from a generator seeded with ``i``,
and the global batch of every step comes from a fixed pseudo-random order over the
data set (``SampleOrder``, whose position is checkpointed). Each rank takes its share
of the global batch in ``grad_accum`` micro-batches (``slurmkit.plan``), so a run on
fewer ranks sees the same samples per step; only the floating-point order of the
gradient sums changes with the world size.

Launch: ``torchrun ... -m examples.torch_ddp`` (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE
from torchrun) or ``srun python3 -m examples.torch_ddp`` (SLURM_PROCID,
SLURM_NTASKS, SLURM_NTASKS_PER_NODE; MASTER_ADDR and MASTER_PORT from the job
script or ``slurmkit launch``). gloo on CPU, NCCL when CUDA is there.

Also ``python3 -m examples.torch_train compare A B`` (the final checkpoints of two
runs: the largest relative difference of any parameter, as JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from slurmkit.ckpt.torch_adapter import TorchCheckpointer, read_full
from slurmkit.plan import plan

DATASET = 1 << 20


class SampleOrder:
    """Which samples each step trains on: a fixed walk over the data set. Its state
    (the position) is what the checkpoint keeps of the data loader."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self.position = 0  # samples consumed

    def next_ids(self) -> np.ndarray:
        start = self.position
        self.position += self.global_batch
        return (start * 7919 + np.arange(self.global_batch) * 104729) % DATASET

    def state_dict(self) -> dict:
        return {"position": self.position, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["global_batch"] != self.global_batch:
            raise ValueError(f"the checkpoint trained with a global batch of "
                             f"{state['global_batch']}, not {self.global_batch}")
        self.position = state["position"]


_TEACHER: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def samples(ids: np.ndarray, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the samples ``ids`` (each from its own seed)."""
    if dim not in _TEACHER:
        generator = torch.Generator().manual_seed(12345)
        _TEACHER[dim] = (torch.randn(dim, 32, generator=generator) / dim ** 0.5,
                         torch.randn(32, 1, generator=generator) / 32 ** 0.5)
    first, second = _TEACHER[dim]
    x = torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(int(i)))
                     for i in ids]) if len(ids) else torch.empty(0, dim)
    return x, torch.tanh(x @ first) @ second


def make_model(dim: int, hidden: int, layers: int) -> torch.nn.Sequential:
    modules: list[torch.nn.Module] = [torch.nn.Linear(dim, hidden), torch.nn.ReLU()]
    for _ in range(layers - 1):
        modules += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    return torch.nn.Sequential(*modules, torch.nn.Linear(hidden, 1))


def init_distributed() -> tuple[int, int, int, torch.device]:
    """rank, world size, ranks per node, device: from torchrun's variables, else from
    srun's (env rendezvous at MASTER_ADDR:MASTER_PORT)."""
    env = os.environ
    if "RANK" not in env:  # plain srun: the same rendezvous, from Slurm's variables
        env["RANK"], env["WORLD_SIZE"] = env.get("SLURM_PROCID", "0"), env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        env["LOCAL_WORLD_SIZE"] = str(max(1, int(env["WORLD_SIZE"]) // max(1, nodes)))
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
    from datetime import timedelta

    # A peer that dies mid-collective makes gloo fail at once (connection reset); a
    # node that vanishes without a reset is found by the heartbeat (slurmkit launch),
    # and by this timeout otherwise.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=120))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), int(env["LOCAL_WORLD_SIZE"]), device


def parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--periodic-steps", type=int, default=10,
                        help="periodic checkpoint interval in steps (0: none)")
    parser.add_argument("--no-replication", action="store_true",
                        help="no peer replicas of the shards (FSDP): a lost node's shard "
                             "is then only in the last periodic checkpoint")
    parser.add_argument("--no-triggered", action="store_true")
    parser.add_argument("--step-seconds", type=float, default=0.0,
                        help="extra time per step (paces the cluster tests)")
    return parser


def train(argv: list[str] | None, *, name: str,
          wrap: Callable[[torch.nn.Module, torch.device, int], torch.nn.Module]) -> int:
    args = parser(f"python3 -m examples.{name}").parse_args(argv)
    # The checkpointer first: its signal handlers and heartbeat before anything else.
    ckpt = TorchCheckpointer.from_env(periodic_steps=args.periodic_steps or None,
                                      replicate=not args.no_replication,
                                      triggered=not args.no_triggered, keep=3)
    rank, world, per_node, device = init_distributed()
    run, attempt = ckpt.run, ckpt.attempt

    def say(text: str) -> None:
        if rank == 0:
            print(f"{name}: run {run}.{attempt} {text} t={time.time():.3f}", flush=True)

    layout = plan(world, gpus_per_node=per_node, model_gb=0.05, gpu_memory_gb=16,
                  global_batch=args.global_batch, micro_batch=args.micro_batch)
    torch.manual_seed(0)  # every rank alike: the same initial weights, the same RNG
    model = wrap(make_model(args.dim, args.hidden, args.layers).to(device), device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    order = SampleOrder(args.global_batch)
    ckpt.register(model, optimizer, data=order)
    try:
        start = ckpt.restore()
        nodes = os.environ.get("SLURM_STEP_NODELIST") or socket.gethostname()
        say(f"start at step {start}: {world} ranks on {nodes}, dp={layout.dp} "
            f"micro_batch={layout.micro_batch} grad_accum={layout.grad_accum}")
        if rank == 0:
            ckpt.event("run-start", ranks=world, layout=layout.to_dict(), example=name)
        per_rank = layout.micro_batch * layout.grad_accum
        for step in range(start, args.steps):
            ids = order.next_ids()[rank * per_rank:(rank + 1) * per_rank]
            total = torch.zeros((), device=device)
            for micro in range(layout.grad_accum):
                x, y = samples(ids[micro * layout.micro_batch:(micro + 1) * layout.micro_batch],
                               args.dim)
                with accumulating(model, micro < layout.grad_accum - 1):
                    loss_sum = (model(x.to(device)) - y.to(device)).square().sum()
                    # DDP and FSDP average over ranks: scaled so that the gradient is
                    # the mean over the global batch, whatever the world size.
                    (loss_sum * world / args.global_batch).backward()
                total += loss_sum.detach()
            dist.all_reduce(total)
            with ckpt.update(step + 1):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss = float(total) / args.global_batch
            say(f"step {step + 1} loss {loss:.8f}")
            if rank == 0:
                ckpt.event("step", step=step + 1, loss=loss)
            ckpt.maybe_checkpoint()
            if args.step_seconds:
                time.sleep(args.step_seconds)
        ckpt.checkpoint("final")
        dist.barrier()
    except RuntimeError as error:  # a collective lost a peer
        if not dist.is_initialized() or "destroy" in str(error):
            raise
        ckpt.trigger(f"collective failed: {error}")
        return 85  # not reached: trigger exits
    say(f"done step {args.steps}")
    ckpt.close()
    dist.destroy_process_group()
    return 0


def accumulating(model: torch.nn.Module, more: bool):
    """Gradients of micro-batches before the last stay local (no collective)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync() if more else contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(not more)
    return contextlib.nullcontext()


def fsdp2_cpu_shim() -> None:
    """Two gaps of torch 2.6 that FSDP2 on CPU (gloo) falls into:

    - it records and waits on events of CPU "streams", which only torch 2.7 gives
      (CPU work runs in order: events that do nothing are exact);
    - gloo's ``reduce_scatter_tensor`` sums when asked to average (``ReduceOp.AVG``):
      gradients came out ``world`` times too large (Adam nearly hides it: the losses
      drifted from DDP's by 1e-3). Sum, then divide, as NCCL's average does."""
    if not hasattr(torch.cpu.Stream, "record_event"):
        torch.cpu.Stream.record_event = lambda self, event=None: torch.cpu.Event()
        torch.cpu.Stream.wait_event = lambda self, event: None
    if getattr(dist.reduce_scatter_tensor, "averages_on_gloo", False):
        return
    original = dist.reduce_scatter_tensor

    def reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=None,
                              async_op=False):
        if op != dist.ReduceOp.AVG or dist.get_backend(group) != "gloo":
            return original(output, input, op, group, async_op)
        work = original(output, input, dist.ReduceOp.SUM, group, False)
        output.div_(dist.get_world_size(group))
        return work

    reduce_scatter_tensor.averages_on_gloo = True
    dist.reduce_scatter_tensor = reduce_scatter_tensor


def compare(first: str, second: str) -> dict:
    """How far apart the parameters of the newest checkpoints of two runs are: the
    largest relative difference of any parameter tensor (norm-wise: ||a - b|| / ||b||;
    0.0 when bitwise equal)."""
    from slurmkit.ckpt import store

    states = []
    for directory in (first, second):
        step, path = store.committed_steps(Path(directory))[0]
        states.append((step, read_full(path, step)))
    (step_a, a), (step_b, b) = states
    worst, bitwise = 0.0, True
    for fqn in sorted(k for k in a if k.startswith("model.")):
        x, y = a[fqn].double(), b[fqn].double()
        bitwise &= torch.equal(a[fqn], b[fqn])
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return {"steps": [step_a, step_b], "max_rel_diff": worst, "bitwise": bitwise,
            "params": sum(v.numel() for k, v in a.items() if k.startswith("model."))}


if __name__ == "__main__":
    if sys.argv[1:2] != ["compare"] or len(sys.argv) != 4:
        sys.exit("usage: python3 -m examples.torch_train compare CKPT_DIR_A CKPT_DIR_B")
    print(json.dumps(compare(sys.argv[2], sys.argv[3])))
