"""``slurmkit launch``: the in-allocation restart loop, started by the training
template in the batch step (its options are those of ``python3 -m slurmkit.launch``)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False,
                                 "help_option_names": []})
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def launch(arguments: tuple[str, ...]) -> None:
    """Run the training as srun steps of this --no-kill job and restart it in place
    on the survivors (or a spare) when a rank is lost (`slurmkit launch --help`)."""
    from slurmkit.launch.cli import main

    sys.exit(main(list(arguments)))
