"""``slurmkit plan``: the parallel layout for a number of GPUs (pure, no Slurm)."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="GPUs available (default: SLURM_JOB_NUM_NODES x --gpus-per-node).")
@click.option("--gpus-per-node", type=click.IntRange(1), required=True)
@click.option("--model-gb", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Model states (weights + gradients + optimizer), GB.")
@click.option("--gpu-memory-gb", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--global-batch", type=click.IntRange(1), required=True)
@click.option("--micro-batch", type=click.IntRange(1), required=True)
@click.option("--max-pp", type=click.IntRange(1), default=8, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=None,
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
        gpus = int(nodes) * gpus_per_node
    layout = make_plan(gpus, gpus_per_node=gpus_per_node, model_gb=model_gb,
                       gpu_memory_gb=gpu_memory_gb, global_batch=global_batch,
                       micro_batch=micro_batch, max_pp=max_pp, layers=layers)
    if as_json:
        click.echo(json.dumps(layout.to_dict()))
    else:
        click.echo(f"tp={layout.tp} pp={layout.pp} dp={layout.dp} micro_batch={layout.micro_batch} "
                   f"grad_accum={layout.grad_accum} global_batch={layout.global_batch} "
                   f"gpus_used={layout.gpus_used}/{layout.gpus}")
