"""``slurmkit submit`` and ``slurmkit render``."""

from __future__ import annotations

import json
import sys

import click

from slurmkit.cli._paths import PathArg
from slurmkit.cli._spec_options import health_options, overrides_from_flags, spec_flags


def _build(spec_path: str | None, params: dict):
    from slurmkit import spec as spec_module

    return spec_module.load_spec(spec_path, overrides_from_flags(params))


@click.command()
@click.option("-f", "--spec", "spec_path", type=PathArg(dir_okay=False),
              help="TOML job spec (flags override its values).")
@click.option("--template-dir", multiple=True, type=PathArg(file_okay=False),
              help="Look for templates here first (repeatable).")
@spec_flags
def render(spec_path, template_dir, **params) -> None:
    """Print the sbatch script for a job spec and flags, without placement.

    \b
    slurmkit render --kind training -N 2-4 --gpus-per-node 8 -J run1 -- python train.py
    """
    from slurmkit.render import render_script

    click.echo(render_script(_build(spec_path, params), template_dirs_extra=template_dir),
               nl=False)


@click.command()
@click.argument("spec_path", metavar="SPEC", type=PathArg(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show the script and placement; submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--explain", is_flag=True, help="Explain the placement on stderr.")
@health_options
@click.option("--template-dir", multiple=True, type=PathArg(file_okay=False),
              help="Look for templates here first (repeatable).")
@spec_flags
@click.pass_obj
def submit(connection, spec_path, dry_run, as_json, explain, health_since, max_node_failures,
           template_dir, **params) -> None:
    """Validate SPEC (+ flags), place it on the topology, render and submit it.

    \b
    slurmkit submit job.toml -N 2 --dry-run --explain
    slurmkit --host alice@login submit job.toml -- python train.py --lr 3e-4
    """
    from slurmkit import submission as submission_module

    spec = _build(spec_path, params)
    can_query = not (dry_run and not connection.reaches_slurm and not _have_slurm())
    submission = submission_module.prepare(
        spec, connection.client() if can_query and spec.placement != "none" else None,
        health_since=None if health_since == "off" else health_since,
        max_failures=max_node_failures, template_dirs=template_dir)
    for line in submission.notes + (submission.explanation if explain else ()):
        click.echo(f"slurmkit: {line}", err=True)
    result = {"job_id": None, "dry_run": dry_run, "placement": submission.placement_json()}
    if not dry_run:
        submitted = submission_module.submit(submission, connection.client())
        result["job_id"] = submitted.job_id
        if submitted.stderr.strip():
            click.echo(submitted.stderr.rstrip(), err=True)  # sbatch's own warnings
    if as_json:
        click.echo(json.dumps({**result, "script": submission.script}, indent=2))
    elif dry_run:
        click.echo(submission.script, nl=False)
    else:
        click.echo(f"Submitted batch job {result['job_id']}")


def _have_slurm() -> bool:
    import shutil

    return shutil.which("sbatch") is not None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(submit())
