"""``slurmkit completion SHELL``: print the shell's completion script (Click's)."""

from __future__ import annotations

import click


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash:  eval "$(slurmkit completion bash)"       (e.g. in ~/.bashrc)
    zsh:   eval "$(slurmkit completion zsh)"        (e.g. in ~/.zshrc)
    fish:  slurmkit completion fish > ~/.config/fish/completions/slurmkit.fish
    """
    from click.shell_completion import get_completion_class

    from slurmkit.cli import cli

    completer = get_completion_class(shell)(cli, {}, "slurmkit", "_SLURMKIT_COMPLETE")
    click.echo(completer.source())
