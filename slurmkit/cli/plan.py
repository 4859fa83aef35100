"""``slurmkit plan``: the parallel layout for a number of GPUs (pure, no Slurm)."""

from __future__ import annotations

import json
import math
import re

import click

# Kept equal to slurmkit.plan's bounds without importing it at start-up (the test
# checks they match).
MAX_GPUS = 10_000_000
MAX_GPUS_PER_NODE = 1024
MAX_BATCH = 1_000_000_000
MAX_PP = 1024
MAX_LAYERS = 1_000_000


class PositiveGB(click.ParamType):
    """A positive, finite size in GB (click's FloatRange lets nan and inf through)."""

    name = "GB"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            text = str(value).strip()
            if not re.fullmatch(r"[0-9]{1,13}(\.[0-9]{0,9})?|\.[0-9]{1,9}", text):
                self.fail(f"{value!r}: expected a positive number of GB, e.g. 80 or 1.5",
                          param, ctx)
            number = float(text)
        if not math.isfinite(number) or not 0 < number <= 1e12:
            self.fail(f"{value!r}: expected a positive number of GB up to 1e12", param, ctx)
        return number


@click.command()
@click.option("--gpus", type=click.IntRange(1, MAX_GPUS), default=None,
              help="GPUs available (default: SLURM_JOB_NUM_NODES x --gpus-per-node).")
@click.option("--gpus-per-node", type=click.IntRange(1, MAX_GPUS_PER_NODE), required=True)
@click.option("--model-gb", type=PositiveGB(), required=True,
              help="Model states (weights + gradients + optimizer), GB.")
@click.option("--gpu-memory-gb", type=PositiveGB(), required=True)
@click.option("--global-batch", type=click.IntRange(1, MAX_BATCH), required=True)
@click.option("--micro-batch", type=click.IntRange(1, MAX_BATCH), required=True)
@click.option("--max-pp", type=click.IntRange(1, MAX_PP), default=8, show_default=True)
@click.option("--layers", type=click.IntRange(1, MAX_LAYERS), default=None,
              help="Model layers: pipeline stages must divide them.")
@click.option("--json", "as_json", is_flag=True)
def plan(gpus, gpus_per_node, model_gb, gpu_memory_gb, global_batch, micro_batch, max_pp,
         layers, as_json) -> None:
    """TP x PP x DP and gradient accumulation for GPUS, global batch unchanged.

    \b
    slurmkit plan --gpus 900 --gpus-per-node 8 --model-gb 1200 --gpu-memory-gb 80 \\
        --global-batch 4096 --micro-batch 2
    """
    import os

    from slurmkit.plan import plan as make_plan

    if gpus is None:
        nodes = os.environ.get("SLURM_JOB_NUM_NODES")
        if not nodes:
            raise click.UsageError("give --gpus, or run inside a job (SLURM_JOB_NUM_NODES)")
        if not re.fullmatch(r"[0-9]{1,8}", nodes.strip()) or int(nodes) < 1:
            raise click.UsageError(f"SLURM_JOB_NUM_NODES={nodes!r} is not a node count; "
                                   "give --gpus")
        gpus = int(nodes) * gpus_per_node
        if gpus > MAX_GPUS:
            raise click.UsageError(f"SLURM_JOB_NUM_NODES={nodes} x {gpus_per_node} GPUs is "
                                   f"more than {MAX_GPUS} GPUs; give --gpus")
    layout = make_plan(gpus, gpus_per_node=gpus_per_node, model_gb=model_gb,
                       gpu_memory_gb=gpu_memory_gb, global_batch=global_batch,
                       micro_batch=micro_batch, max_pp=max_pp, layers=layers)
    if as_json:
        click.echo(json.dumps(layout.to_dict()))
    else:
        click.echo(f"tp={layout.tp} pp={layout.pp} dp={layout.dp} micro_batch={layout.micro_batch} "
                   f"grad_accum={layout.grad_accum} global_batch={layout.global_batch} "
                   f"gpus_used={layout.gpus_used}/{layout.gpus}")
