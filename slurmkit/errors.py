"""The one exception tree of slurmkit.

Library code raises these and never exits; the CLI edge (``slurmkit.cli``) turns them
into a one-paragraph message and an exit code. Every message names the cause and,
where there is one, the fix.
"""

from __future__ import annotations


class SlurmkitError(Exception):
    """Base of every error slurmkit raises on purpose.

    ``exit_code`` is what the CLI exits with: 1 for failures of the world (Slurm,
    network, files), 2 for bad input the user can fix (Click's usage convention).
    """

    exit_code = 1


class UserInputError(SlurmkitError):
    """Bad input: a spec, a flag, a config value. The message says how to fix it."""

    exit_code = 2


class SlurmCommandError(SlurmkitError):
    """A Slurm command ran and failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, where: str = "local"):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.where = where
        detail = self.stderr or "(no output on stderr)"
        super().__init__(
            f"{argv[0]} failed with exit status {returncode} ({where}): {detail}"
        )


class ControllerUnreachableError(SlurmCommandError):
    """slurmctld (or slurmdbd, for sacct) did not answer."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, where: str = "local"):
        super().__init__(argv, returncode, stderr, where)
        self.args = (
            f"cannot reach the Slurm controller: {argv[0]} ({where}) said: "
            f"{self.stderr or 'nothing'}. Check that slurmctld is running "
            "(`scontrol ping`), that SlurmctldHost in slurm.conf (or $SLURM_CONF) "
            "points at it, and that munge works (`munge -n | unmunge`).",
        )


class CommandTimeoutError(SlurmkitError):
    """A command outlived its timeout and was killed (with its process group)."""

    def __init__(self, argv: list[str], timeout_s: float, where: str = "local"):
        self.argv = list(argv)
        self.timeout_s = timeout_s
        super().__init__(
            f"{argv[0]} ({where}) did not finish within {timeout_s:g} s and was killed; "
            "the controller may be overloaded or unreachable"
        )


class CommandNotFoundError(SlurmkitError):
    """The Slurm command is not installed where slurmkit tried to run it."""

    def __init__(self, program: str, where: str = "local"):
        self.program = program
        super().__init__(
            f"{program} was not found ({where}): install the Slurm client commands "
            "there, or run against a login node with --host USER@LOGIN"
        )


class ParseError(SlurmkitError):
    """Slurm printed something that is not what its machine-readable format promises."""

    def __init__(self, what: str, reason: str, excerpt: str = ""):
        self.what = what
        self.reason = reason
        shown = excerpt[:200].replace("\n", "\\n")
        suffix = f" (output began: {shown!r})" if shown else ""
        super().__init__(f"cannot parse {what}: {reason}{suffix}")


class RemoteError(SlurmkitError):
    """SSH to a login node failed: connection, authentication or host key."""


class HostKeyMismatchError(RemoteError):
    """The server's host key differs from the one recorded in known_hosts."""


class HostKeyUnknownError(RemoteError):
    """The server is not in known_hosts; slurmkit never trusts a key on first use."""


class ClusterHarnessError(SlurmkitError):
    """The docker-slurm test cluster could not be built, started or changed."""


class RouterError(SlurmkitError):
    """HAProxy, the router of a `slurmkit serve` service, refused a command or did not
    answer."""
