"""What every command shares: how to reach Slurm (locally or over SSH)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Connection:
    """Lazily builds the runner and client for the global --host/--ssh-key options."""

    host: str | None = None
    ssh_key: str | None = None
    known_hosts: str | None = None
    replay_dir: str | None = None
    _runner: object = field(default=None, repr=False)

    @property
    def reaches_slurm(self) -> bool:
        """True when commands go somewhere other than this machine's PATH."""
        return bool(self.host or self.replay_dir)

    def runner(self):
        if self._runner is None:
            if self.replay_dir:
                from slurmkit.slurm.runner import ReplayRunner

                self._runner = ReplayRunner(Path(self.replay_dir).expanduser())
            elif self.host:
                from slurmkit.slurm.runner import SSHRunner, SSHTarget

                self._runner = SSHRunner(
                    SSHTarget.parse(self.host),
                    key_path=Path(self.ssh_key).expanduser() if self.ssh_key else None,
                    known_hosts_path=Path(self.known_hosts).expanduser() if self.known_hosts else None,
                )
            else:
                from slurmkit.slurm.runner import LocalRunner

                self._runner = LocalRunner()
        return self._runner

    def client(self):
        from slurmkit.slurm.client import SlurmClient

        return SlurmClient(self.runner())

    def close(self) -> None:
        close = getattr(self._runner, "close", None)
        if close:
            close()
