"""``slurmkit submit`` and ``slurmkit render``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from slurmkit.cli._spec_options import merge_env, overrides_from_flags, spec_flags


def _build(spec_path: str | None, params: dict):
    from slurmkit import spec as spec_module

    file_values = spec_module.load_toml(Path(spec_path)) if spec_path else {}
    overrides = overrides_from_flags(params)
    if "env" in overrides:
        overrides["env"] = merge_env(file_values.get("env", {}), overrides["env"])
    source = spec_path or "command-line flags"
    return spec_module.build_spec(file_values, overrides, source=source)


@click.command()
@click.option("-f", "--spec", "spec_path", type=click.Path(dir_okay=False),
              help="TOML job spec (flags override its values).")
@click.option("--template-dir", multiple=True, type=click.Path(file_okay=False),
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
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show the script and placement; submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--explain", is_flag=True, help="Explain the placement on stderr.")
@click.option("--health-since", default="now-1days", show_default=True,
              help="Count node failures since then (sacct time); 'off' to ignore health.")
@click.option("--max-node-failures", default=1, show_default=True, type=click.IntRange(1),
              help="Failures in the window that make a node unhealthy.")
@click.option("--template-dir", multiple=True, type=click.Path(file_okay=False),
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
    from slurmkit.render import render_script

    spec = _build(spec_path, params)
    placement_options = decision = None
    notes: list[str] = []
    can_query = not (dry_run and connection.host is None and not _have_slurm())
    if spec.placement != "none" and can_query:
        from slurmkit.submission import choose_placement, gather_view

        view = gather_view(connection.client(),
                           health_since=None if health_since == "off" else health_since,
                           max_failures=max_node_failures)
        notes += view.notes
        placement_options, decision = choose_placement(spec, view)
    elif spec.placement != "none":
        notes.append("no Slurm commands here and no --host: rendered without placement")
    script = render_script(spec, placement_options, template_dirs_extra=template_dir)
    if explain or notes:
        for line in notes + (list(decision.explanation) if decision and explain else []):
            click.echo(f"slurmkit: {line}", err=True)
    result = {"job_id": None, "dry_run": dry_run,
              "placement": _placement_json(placement_options, decision)}
    if not dry_run:
        submitted = connection.client().submit(script)
        result["job_id"] = submitted.job_id
        if submitted.stderr.strip():
            click.echo(submitted.stderr.rstrip(), err=True)  # sbatch's own warnings
    if as_json:
        click.echo(json.dumps({**result, "script": script}, indent=2))
    elif dry_run:
        click.echo(script, nl=False)
    else:
        click.echo(f"Submitted batch job {result['job_id']}")


def _have_slurm() -> bool:
    import shutil

    return shutil.which("sbatch") is not None


def _placement_json(options, decision) -> dict | None:
    if options is None:
        return None
    return {
        "nodelist": options.nodelist, "exclude": options.exclude, "switches": options.switches,
        "leaf_switches": list(decision.leaves) if decision else [],
        "optimal_leaf_switches": decision.optimal_leaves if decision else None,
        "common_switch": decision.common_switch if decision else None,
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(submit())
