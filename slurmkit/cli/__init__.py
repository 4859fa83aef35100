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
from slurmkit.cli._paths import PathArg
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
    "serve": ("slurmkit.cli.serve", "serve", "Run an inference service behind HAProxy, scaled with its traffic."),
    "launch": ("slurmkit.cli.launch", "launch", "Inside a job: run and restart the training in place."),
    "completion": ("slurmkit.cli.completion", "completion", "Print a shell completion script."),
}


def one_line(message: str) -> str:
    """An error message as one line: lines joined with '; ', control characters
    escaped (a file name or a Slurm message must not move the cursor or end the line)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    text = "".join(part + ("" if index == len(parts) - 1 else " " if part.endswith(":")
                           else "; ") for index, part in enumerate(parts))
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class SlurmkitClickError(click.ClickException):
    """A SlurmkitError at the CLI edge: one line, the error's exit code."""

    def __init__(self, error: SlurmkitError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", err=True, file=file)


def _usage_hint(error: click.UsageError) -> str:
    path = error.ctx.command_path if error.ctx is not None else "slurmkit"
    return f" (see '{path} --help')"


def run_edge(call) -> int:
    """Run ``call`` (Click in non-standalone mode) and turn every way it can end into
    one line on stderr and an exit status: 0 done, 1 the world failed, 2 bad input,
    130 interrupted. Anything else is a bug in slurmkit: said so in one line (the
    traceback with SLURMKIT_DEBUG=1), exit 1."""
    debug = bool(os.environ.get("SLURMKIT_DEBUG"))
    try:
        result = call()
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        click.echo(f"error: {one_line(error.format_message())}{_usage_hint(error)}", err=True)
        return 2
    except click.ClickException as error:
        click.echo(f"error: {one_line(error.format_message())}", err=True)
        return error.exit_code
    except SlurmkitError as error:  # raised outside a command (e.g. while parsing)
        if debug:
            raise
        click.echo(f"error: {one_line(str(error))}", err=True)
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence, named as a bug
        if debug:
            raise
        click.echo(f"error: internal error (a bug in slurmkit): {type(error).__name__}: "
                   f"{one_line(str(error))[:300]}; run again with SLURMKIT_DEBUG=1 for the "
                   "traceback and report it", err=True)
        return 1


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use. Turns SlurmkitError
    into a one-line message and its exit code (tracebacks with SLURMKIT_DEBUG=1)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        """Standalone (the console script, CliRunner): every error is one line
        ``error: ...`` and an exit status (see ``run_edge``)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(run_edge(lambda: super(LazyGroup, self).main(
            args, prog_name or "slurmkit", complete_var, standalone_mode=False, **extra)))

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
@click.option("--ssh-key", type=PathArg(dir_okay=False), envvar="SLURMKIT_SSH_KEY",
              help="Private key for --host (default: ssh-agent and ~/.ssh keys).")
@click.option("--known-hosts", type=PathArg(dir_okay=False), envvar="SLURMKIT_KNOWN_HOSTS",
              help="known_hosts file that must hold the login node's key "
                   "(default: ~/.ssh/known_hosts).")
@click.option("--replay", "replay_dir", type=PathArg(file_okay=False),
              envvar="SLURMKIT_REPLAY_DIR", hidden=True,
              help="Answer Slurm commands from outputs recorded in this directory "
                   "(its manifest.json); for tests and benchmarks.")
@click.pass_context
def cli(ctx: click.Context, host: str | None, ssh_key: str | None,
        known_hosts: str | None, replay_dir: str | None) -> None:
    """slurmkit: topology-aware submission, preemptible GPU queues, triggered
    checkpoints and goodput reports for Slurm."""
    from slurmkit.cli._context import Connection

    if host and replay_dir:
        raise click.UsageError("--host and --replay (SLURMKIT_REPLAY_DIR) exclude each other")
    ctx.obj = Connection(host=host, ssh_key=ssh_key, known_hosts=known_hosts,
                         replay_dir=replay_dir)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the only place that turns errors into exit codes."""
    cli.main(args=argv, prog_name="slurmkit")
