"""Where Slurm commands run: this machine, a login node over SSH, or nowhere.

A runner takes an argv list (never a shell string), runs it with a timeout that kills
the whole process group, and returns what it printed. It does not judge the exit
status: ``slurmkit.slurm.client`` does, because only it knows which failures mean
"controller unreachable" and which mean "bad request".

Chosen by capability, as submitit and ReFrame do: ``LocalRunner`` where the Slurm
client commands are installed, ``SSHRunner`` from a laptop, ``RecordingRunner`` for
dry runs and tests.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from slurmkit.errors import (
    CommandNotFoundError,
    CommandTimeoutError,
    HostKeyMismatchError,
    HostKeyUnknownError,
    RemoteError,
    UserInputError,
)

#: Variables that change what Slurm's commands print or submit. They are removed from
#: the environment slurmkit runs Slurm in, locally and over SSH, so that a user's
#: SQUEUE_FORMAT or an inherited SBATCH_* / SLURM_* cannot change parsed output or a
#: rendered submission behind the spec's back (ReFrame does the same). sbatch reads
#: about sixty SBATCH_* variables (sbatch/opt.c env_vars[]: SBATCH_NO_REQUEUE defeats
#: --requeue, SBATCH_PARTITION, SBATCH_GPUS, ...) and some SLURM_* ones (SLURM_CLUSTERS,
#: SLURM_HINT, SLURM_UMASK, SLURM_EXIT_ERROR), and every inherited SLURM_*/SRUN_* value
#: reaches the job's environment, where srun reads it (SLURM_CPUS_PER_TASK,
#: SLURM_NTASKS...): so whole prefixes go, not a list of names.
_DROPPED_PREFIXES = ("SBATCH_", "SALLOC_", "SRUN_", "SLURM_", "SQUEUE_", "SINFO_", "SACCT_",
                     "SCONTROL_", "SPRIO_", "SSHARE_", "SSTAT_")
#: Kept although they match: where slurm.conf is (a site may need it to reach the
#: cluster at all).
KEPT_ENV = ("SLURM_CONF",)
#: Pinned so that times in text output are UNIX epoch seconds (strftime's %s): no
#: time zone to guess when sacct ran on a login node in another zone.
PINNED_ENV = {"SLURM_TIME_FORMAT": "%s"}


def _dropped(name: str) -> bool:
    return name.startswith(_DROPPED_PREFIXES) and name not in KEPT_ENV


def slurm_environment(base: Mapping[str, str], keep: Sequence[str] = ()) -> dict[str, str]:
    """Return ``base`` without Slurm's output/submission overrides (every variable
    with a prefix in ``_DROPPED_PREFIXES`` except ``KEPT_ENV``), plus ``PINNED_ENV``.

    ``keep`` names variables to keep although they match a dropped prefix.
    """
    kept = set(keep)
    env = {name: value for name, value in base.items() if name in kept or not _dropped(name)}
    env.update(PINNED_ENV)
    return env


#: The same scrub on the login node, whose environment slurmkit cannot see (the user's
#: shell start-up files may export SBATCH_*). POSIX sh: list the environment's names,
#: unset those with a dropped prefix; ``command unset`` so that a name sh rejects does
#: not end the shell (a special built-in's error would); globbing off for the loop.
#: Then exec the command given as arguments.
_REMOTE_SCRUB = (
    'set -f; for name in $(env | cut -d= -f1); do case "$name" in '
    + " | ".join(KEPT_ENV) + ") ;; "
    + " | ".join(f"{prefix}*" for prefix in _DROPPED_PREFIXES)
    + ') command unset "$name" 2>/dev/null ;; esac; done; set +f; exec "$@"'
)


@dataclass(frozen=True)
class CommandResult:
    """What one command printed. ``stdout``/``stderr`` are decoded as UTF-8 with
    replacement characters, so odd bytes in job names never raise."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    where: str = "local"


class Runner(Protocol):
    """Runs argv lists somewhere. Implementations are not thread-safe."""

    #: Human-readable location used in error messages ("local", "alice@login:22").
    where: str

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> CommandResult: ...


class LocalRunner:
    """Runs commands on this machine, in their own process group."""

    where = "local"

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = slurm_environment(os.environ if env is None else env)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> CommandResult:
        argv = [str(arg) for arg in argv]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                encoding="utf-8",
                errors="replace",
                # Own session: on timeout the whole group (sbatch's children, ssh
                # helpers) is killed, not just the direct child.
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandNotFoundError(argv[0], self.where) from None
        try:
            stdout, stderr = process.communicate(input_text, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise CommandTimeoutError(argv, timeout_s, self.where) from None
        except BaseException:
            _kill_group(process)
            raise
        return CommandResult(tuple(argv), process.returncode, stdout, stderr, self.where)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


@dataclass
class RecordingRunner:
    """Runs nothing: records each argv and answers from ``responder``.

    Used by ``--dry-run`` (which shows what would run) and by unit tests.
    """

    responder: Callable[[tuple[str, ...]], CommandResult] | None = None
    where: str = "dry-run"
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> CommandResult:
        call = tuple(str(arg) for arg in argv)
        self.calls.append(call)
        if self.responder is None:
            return CommandResult(call, 0, "", "", self.where)
        return self.responder(call)


class ReplayRunner:
    """Runs nothing: answers from outputs recorded in ``directory``, described by its
    ``manifest.json``: ``[{"argv": ["scontrol", "show", "nodes"], "stdout": "nodes.json",
    "stderr": "", "returncode": 0}, ...]``. The first entry whose argv is a prefix of
    the command answers; a command nothing answers fails (exit 1) as an unknown
    command would. Files are read once (``slurmkit.files``, bounded).

    For tests, benchmarks (``bench/cli.py``) and reproducing a user's report without
    their cluster: ``slurmkit --replay DIR`` or ``SLURMKIT_REPLAY_DIR``.
    """

    #: A recorded output of 12,500 nodes is ~31 MB; far more is not a recording.
    MAX_OUTPUT_BYTES = 1 << 30

    def __init__(self, directory: str | os.PathLike):
        import json

        from slurmkit import files

        self.directory = Path(directory)
        self.where = f"replay of {self.directory}"
        self.calls: list[tuple[str, ...]] = []
        self._cache: dict[str, str] = {}
        manifest_path = self.directory / "manifest.json"
        text = files.read_text(manifest_path, "replay manifest")
        try:
            manifest = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise UserInputError(f"replay manifest {manifest_path} is not JSON: {error}") from None
        self.entries: list[tuple[tuple[str, ...], dict]] = []
        if not isinstance(manifest, list):
            raise UserInputError(f"replay manifest {manifest_path}: expected a JSON list")
        for index, entry in enumerate(manifest):
            argv = entry.get("argv") if isinstance(entry, dict) else None
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
                    and isinstance(entry.get("stdout", ""), str)
                    and isinstance(entry.get("stderr", ""), str)
                    and type(entry.get("returncode", 0)) is int):
                raise UserInputError(f"replay manifest {manifest_path} entry {index}: expected "
                                     '{"argv": [...], "stdout": FILE, "stderr": TEXT, '
                                     '"returncode": N}')
            self.entries.append((tuple(argv), entry))

    def _output(self, name: str) -> str:
        from slurmkit import files

        if name not in self._cache:
            path = self.directory / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise UserInputError(f"replay manifest names {name!r} outside {self.directory}")
            self._cache[name] = files.read_text(path, "recorded output",
                                                max_bytes=self.MAX_OUTPUT_BYTES)
        return self._cache[name]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> CommandResult:
        call = tuple(str(arg) for arg in argv)
        self.calls.append(call)
        for prefix, entry in self.entries:
            if call[:len(prefix)] == prefix:
                stdout = self._output(entry["stdout"]) if entry.get("stdout") else ""
                return CommandResult(call, entry.get("returncode", 0), stdout,
                                     entry.get("stderr", ""), self.where)
        return CommandResult(call, 1, "", f"{call[0]}: no recorded output for this command "
                                          f"in {self.directory}", self.where)


# --------------------------------------------------------------------------- SSH

_TARGET_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>[0-9]{1,5}))?$")


@dataclass(frozen=True)
class SSHTarget:
    """``[user@]host[:port]``; IPv6 hosts in brackets."""

    host: str
    user: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> SSHTarget:
        match = _TARGET_RE.match(text.strip()) if text.isprintable() else None
        if not match:
            raise UserInputError(
                f"invalid SSH target {text!r}: expected [USER@]HOST[:PORT], "
                "e.g. alice@login.example.org or alice@127.0.0.1:2222"
            )
        port = int(match["port"]) if match["port"] else 22
        if not 0 < port < 65536:
            raise UserInputError(f"invalid SSH port {port} in {text!r}: expected 1-65535")
        return cls(match["host"].strip("[]"), match["user"] or getpass.getuser(), port)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name this host has in a known_hosts file (OpenSSH's convention)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


#: Exit status of coreutils `timeout` when it had to stop the command.
_REMOTE_TIMEOUT_STATUS = {124, 137}
#: Exit status of `env` when the program does not exist.
_REMOTE_NOT_FOUND_STATUS = 127


class SSHRunner:
    """Runs commands on a login node through SSH (paramiko), with key authentication
    and host keys checked against known_hosts: an unknown or changed host key is an
    error, never trusted on first use.

    The remote side gets ``sh -c SCRUB ... env VAR=... timeout --kill-after=5 T argv...``
    joined with ``shlex.join`` (see ``remote_command``), so each argument arrives as one
    word whatever it contains, inherited Slurm variables are dropped there too, and a
    timeout kills the remote command, not just the local wait.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        key_path: Path | None = None,
        known_hosts_path: Path | None = None,
        connect_timeout_s: float = 15.0,
    ):
        self.target = target
        self.key_path = key_path
        self.known_hosts_path = known_hosts_path
        self.connect_timeout_s = connect_timeout_s
        self.where = str(target)
        self._client = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SSHRunner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def remote_command(self, argv: Sequence[str], timeout_s: float) -> str:
        """The command line sent to sshd (run by the user's login shell): ``sh`` scrubs
        the environment as ``slurm_environment`` does, then ``env`` pins PINNED_ENV and
        ``timeout`` bounds the command. Every argument is one shell word."""
        pinned = [f"{name}={value}" for name, value in PINNED_ENV.items()]
        return shlex.join(
            ["sh", "-c", _REMOTE_SCRUB, "slurmkit-env", "env", *pinned, "timeout",
             "--kill-after=5", f"{timeout_s:g}", *[str(arg) for arg in argv]]
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> CommandResult:
        argv = [str(arg) for arg in argv]
        client = self._connect()
        command = self.remote_command(argv, timeout_s)
        deadline = time.monotonic() + timeout_s + 10.0
        try:
            channel = client.get_transport().open_session(timeout=self.connect_timeout_s)
            channel.exec_command(command)
            if input_text is not None:
                channel.sendall(input_text.encode())
            channel.shutdown_write()
            stdout, stderr = _drain(channel, deadline)
            returncode = channel.recv_exit_status()
            channel.close()
        except TimeoutError:
            self.close()
            raise CommandTimeoutError(argv, timeout_s, self.where) from None
        except Exception as error:  # paramiko raises many unrelated types here
            self.close()
            raise RemoteError(f"SSH session to {self.where} failed while running "
                              f"{argv[0]}: {error}") from error
        if returncode in _REMOTE_TIMEOUT_STATUS:
            raise CommandTimeoutError(argv, timeout_s, self.where)
        if returncode == _REMOTE_NOT_FOUND_STATUS and not stdout:
            raise CommandNotFoundError(argv[0], self.where)
        return CommandResult(tuple(argv), returncode, stdout, stderr, self.where)

    def _connect(self):
        if self._client is not None:
            return self._client
        import socket

        import paramiko  # imported here: it costs ~100 ms and only SSH needs it

        client = paramiko.SSHClient()
        known_hosts = self.known_hosts_path or Path.home() / ".ssh" / "known_hosts"
        if self.known_hosts_path is not None or known_hosts.exists():
            _load_known_hosts(client.get_host_keys(), known_hosts)
        client.set_missing_host_key_policy(_RefuseUnknownHost(known_hosts))
        key = _load_private_key(self.key_path) if self.key_path else None
        try:
            client.connect(
                self.target.host,
                port=self.target.port,
                username=self.target.user,
                pkey=key,
                look_for_keys=self.key_path is None,
                allow_agent=self.key_path is None,
                timeout=self.connect_timeout_s,
                banner_timeout=self.connect_timeout_s,
                auth_timeout=self.connect_timeout_s,
            )
        except paramiko.BadHostKeyException as error:
            raise HostKeyMismatchError(
                f"host key of {self.target.known_hosts_name} does not match {known_hosts}: "
                f"the server sent {error.key.get_name()} {_fingerprint(error.key)}, "
                f"known_hosts has {_fingerprint(error.expected_key)}. If the login node "
                "was re-installed, remove the old key with "
                f"`ssh-keygen -R '{self.target.known_hosts_name}' -f {known_hosts}` and "
                "add the new one from a trusted source; otherwise someone may be "
                "intercepting the connection."
            ) from None
        except HostKeyUnknownError:
            raise
        except paramiko.AuthenticationException as error:
            raise RemoteError(
                f"SSH authentication as {self.target.user} on {self.target.host}:"
                f"{self.target.port} failed ({error}); pass the right key with "
                "--ssh-key, or load it into ssh-agent"
            ) from None
        except (OSError, socket.timeout, paramiko.SSHException) as error:
            raise RemoteError(
                f"cannot open an SSH connection to {self.target.host}:{self.target.port}: "
                f"{error}; check the host name, the port and that sshd runs there"
            ) from None
        self._client = client
        return client


#: known_hosts and key files are a few KB; far larger is not one.
_MAX_SSH_FILE_BYTES = 16 << 20


def _load_known_hosts(host_keys, path: Path) -> None:
    """Read known_hosts through ``slurmkit.files`` (a FIFO, a device, bad UTF-8 are
    errors naming the file) into paramiko's HostKeys. Lines paramiko cannot parse are
    skipped, as OpenSSH skips them (paramiko's own loader raises on bad base64)."""
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
    from paramiko.ssh_exception import SSHException

    from slurmkit import files

    text = files.read_text(path, "known_hosts file (--known-hosts)",
                           max_bytes=_MAX_SSH_FILE_BYTES)
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (SSHException, InvalidHostKey, ValueError, TypeError, IndexError):
            continue
        if entry is not None and entry.key is not None:
            for name in entry.hostnames:
                host_keys.add(name, entry.key.get_name(), entry.key)


def _load_private_key(path: Path):
    """The --ssh-key file as a paramiko key: a missing, special or unreadable file and
    a file that is no usable private key are input errors naming the file (not a
    connection problem)."""
    import paramiko

    from slurmkit import files

    files.read_bytes(path, "SSH key file (--ssh-key)", max_bytes=_MAX_SSH_FILE_BYTES)
    try:
        return paramiko.PKey.from_path(path)
    except TypeError as error:  # cryptography: encrypted and no password given
        raise UserInputError(f"SSH key file {path} is encrypted ({error}): load it into "
                             "ssh-agent (`ssh-add`) and leave out --ssh-key") from None
    except (ValueError, paramiko.SSHException, OSError) as error:
        raise UserInputError(f"SSH key file {path} is not a private key slurmkit can use "
                             f"({type(error).__name__}: {error}); give the private key, not "
                             "the .pub file") from None
    except Exception as error:  # cryptography's UnsupportedAlgorithm and the like
        raise UserInputError(f"SSH key file {path} cannot be used: {type(error).__name__}: "
                             f"{error}") from None


def _fingerprint(key) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RefuseUnknownHost:
    """paramiko missing-host-key policy: refuse, with a message that says what to do."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        raise HostKeyUnknownError(
            f"{hostname} is not in {self.known_hosts} (it offered {key.get_name()} "
            f"{_fingerprint(key)}). slurmkit never trusts a host key on first use: "
            "verify the fingerprint with the cluster's admins, then add it, e.g. "
            f"`ssh-keyscan -p PORT HOST >> {self.known_hosts}`, or pass --known-hosts FILE"
        )


def _drain(channel, deadline: float) -> tuple[str, str]:
    """Read stdout and stderr together until the command exits (no window deadlock)."""
    out: list[bytes] = []
    err: list[bytes] = []
    channel.settimeout(0.5)
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        progressed = False
        while channel.recv_ready():
            out.append(channel.recv(65536))
            progressed = True
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
            progressed = True
        # The exit status can arrive before the last of the output (sshd sends it when
        # the command exits, with output still in flight): only the end of the stream
        # (EOF, or the channel closed) says that nothing more will come. Stopping at the
        # exit status cut a 200-line `sacct --json` short.
        ended = channel.eof_received or channel.closed
        if ended and channel.exit_status_ready() and not channel.recv_ready() \
                and not channel.recv_stderr_ready():
            break
        if not progressed:
            # Blocks until data or 0.5 s, whichever first; keeps the loop cheap.
            channel.status_event.wait(0.05)
    decode = lambda chunks: b"".join(chunks).decode("utf-8", errors="replace")  # noqa: E731
    return decode(out), decode(err)
