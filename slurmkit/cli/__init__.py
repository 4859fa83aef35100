"""slurmkit's command line. Each command group lives in its own module and is
imported only when invoked (Click's LazyGroup pattern), so ``slurmkit --help`` does not
pay for Jinja2, paramiko or the topology code.

Errors: library code raises ``slurmkit.errors.SlurmkitError``; ``main`` turns them into
``error: <message>`` on stderr with the error's exit code (1 = the world failed,
2 = bad input). Tracebacks only with SLURMKIT_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from slurmkit import __version__
from slurmkit.errors import SlurmkitError

#: command name -> (module, attribute, one-line help shown without importing it)
_COMMANDS = {
    "show": ("slurmkit.cli.show", "show", "Show nodes, partitions, jobs and accounting runs."),
    "submit": ("slurmkit.cli.submit", "submit", "Validate, place and submit a job spec."),
    "render": ("slurmkit.cli.submit", "render", "Print the sbatch script of a job spec."),
    "topology": ("slurmkit.cli.topology", "topology", "Show the switch tree; try a placement."),
    "policy": ("slurmkit.cli.policy", "policy", "Install, check and simulate the job-submit policy."),
    "goodput": ("slurmkit.cli.goodput", "goodput", "ETTR and badput from accounting (table, JSON, CSV, HTML)."),
    "plan": ("slurmkit.cli.plan", "plan", "Re-plan TP/PP/DP for a number of GPUs."),
    "completion": ("slurmkit.cli.completion", "completion", "Print a shell completion script."),
}


class SlurmkitClickError(click.ClickException):
    """A SlurmkitError at the CLI edge: one line, the error's exit code."""

    def __init__(self, error: SlurmkitError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use. Turns SlurmkitError
    into a one-line message and its exit code (tracebacks with SLURMKIT_DEBUG=1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SlurmkitError as error:
            if os.environ.get("SLURMKIT_DEBUG"):
                raise
            raise SlurmkitClickError(error) from error

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module_name, attribute, _ = self.lazy_commands[name]
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table: listing commands must not import them.
        rows = [(name, self.lazy_commands[name][2]) for name in sorted(self.lazy_commands)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy_commands=_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slurmkit")
@click.option("--host", metavar="[USER@]LOGIN[:PORT]", envvar="SLURMKIT_HOST",
              help="Run Slurm commands on this login node through SSH "
                   "(default: on this machine). Env: SLURMKIT_HOST.")
@click.option("--ssh-key", type=click.Path(dir_okay=False), envvar="SLURMKIT_SSH_KEY",
              help="Private key for --host (default: ssh-agent and ~/.ssh keys).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), envvar="SLURMKIT_KNOWN_HOSTS",
              help="known_hosts file that must hold the login node's key "
                   "(default: ~/.ssh/known_hosts).")
@click.pass_context
def cli(ctx: click.Context, host: str | None, ssh_key: str | None,
        known_hosts: str | None) -> None:
    """slurmkit: topology-aware submission, preemptible GPU queues, triggered
    checkpoints and goodput reports for Slurm."""
    from slurmkit.cli._context import Connection

    ctx.obj = Connection(host=host, ssh_key=ssh_key, known_hosts=known_hosts)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the only place that turns errors into exit codes."""
    try:
        cli.main(args=argv, prog_name="slurmkit", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except SlurmkitError as error:  # raised outside a command (e.g. while parsing)
        if os.environ.get("SLURMKIT_DEBUG"):
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
