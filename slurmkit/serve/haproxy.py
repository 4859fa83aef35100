"""HAProxy in front of a service's replicas: its configuration, its process, and its
runtime API (the admin socket). The only code that talks to HAProxy.

HAProxy is started once per service with a backend that has no servers; replicas
are added (``add server``), taken out of the balance (``set server ... state drain``),
put in maintenance and deleted (``del server``) through the admin socket, and load is
read with ``show stat`` / ``show servers state`` / ``show info``. HAProxy is never
restarted or reloaded: a running process keeps its connections, queues and counters
across every change, and across restarts of the controller, which finds it again
through its pid file and socket.

Each command is split as elsewhere in slurmkit: ``HAProxyAdmin.command`` (text in,
text out over the socket) and ``parse_*`` (text in, records out; pure).

Per-request timings come from HAProxy's log, sent as raw lines to a UNIX datagram
socket that the controller reads (``LOG_FORMAT``; ``parse_log_line``).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmkit.errors import RouterError, UserInputError
from slurmkit.serve.spec import ServiceSpec

#: One log line per request: queue wait, connect, response, whole request (ms), status,
#: server, termination state, retries.
LOG_FORMAT = "%Tw %Tc %Tr %Ta %ST %s %ts %rc"
#: Server admin-state bits (``show servers state``, srv_admin_state).
ADMIN_FORCED_MAINT = 0x01
ADMIN_FORCED_DRAIN = 0x08
_ANY_MAINT = 0x01 | 0x02 | 0x04 | 0x20
_ANY_DRAIN = 0x08 | 0x10
#: What the runtime API answers when a command worked (anything else is an error).
_ADDED = "New server registered."
_DELETED = "Server deleted."


@dataclass(frozen=True)
class Paths:
    """A service's HAProxy files, all in its state directory."""

    state_dir: Path

    @property
    def config(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "haproxy.pid"

    @property
    def log_socket(self) -> Path:
        return self.state_dir / "log.sock"


# ------------------------------------------------------------------- configuration


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def render_config(spec: ServiceSpec, paths: Paths) -> str:
    """haproxy.cfg for ``spec``: a frontend on the router's port, a backend without
    servers (the controller adds them), health checks on the readiness path."""
    router = spec.router
    for path in (paths.socket, paths.pidfile, paths.log_socket):
        if any(ch in str(path) for ch in " \t\n\r\"'#\\"):
            raise UserInputError(f"state directory {paths.state_dir} holds a character "
                                 "HAProxy's configuration cannot quote (space, quote, '#', "
                                 "backslash): set state_dir to a plain path")
    retry_on = ("conn-failure empty-response response-timeout" if router.retry_idempotent
                else "conn-failure")
    return f"""\
# HAProxy of service {spec.name}, written by `slurmkit serve`; replicas are added and
# removed at run time through the admin socket, never by editing this file.
global
    stats socket {paths.socket} mode 600 level admin
    stats timeout 30s
    pidfile {paths.pidfile}
    log {paths.log_socket} len 1024 format raw local0 info

defaults
    mode http
    log global
    option dontlognull
    log-format "{LOG_FORMAT}"
    timeout connect {_ms(router.connect_timeout_s)}
    timeout client 120s
    timeout http-request 30s
    timeout queue {_ms(router.queue_timeout_s)}
    timeout server {_ms(router.request_timeout_s)}
    timeout check {_ms(max(0.2, router.health_interval_ms / 1000))}
    # No idle connections to replicas: a drained replica can be deleted as soon as its
    # last request is answered.
    option http-server-close
    retries {router.retries}
    option redispatch 1
    retry-on {retry_on}

frontend {spec.backend}-in
    bind {router.bind_address}:{router.listen_port}
    default_backend {spec.backend}

backend {spec.backend}
    balance leastconn
    option httpchk GET {spec.readiness_path}
    http-check expect status 200
"""


# ------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ServerStat:
    """One server of the backend (``show stat``)."""

    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, NOLB, "UP 1/2"...
    current: int  # requests at the server now (scur)
    queued: int  # requests in the server's own queue (qcur)
    total: int  # requests sent to it (stot)
    failed: int  # connection + response errors (econ + eresp)
    address: str


@dataclass(frozen=True)
class BackendStat:
    requests_total: int  # requests dispatched to the backend since HAProxy started
    queued: int  # backend queue + servers' queues
    current: int  # requests at the servers
    responses_5xx: int
    servers: dict[str, ServerStat]


def _int(value: str | None) -> int:
    try:
        return int(value) if value not in (None, "") else 0
    except ValueError:
        return 0


def parse_stat_csv(text: str, backend: str) -> BackendStat:
    """``show stat`` CSV -> the backend's counters and its servers. Columns are found
    by name (the header line starts with ``# ``); a backend that is missing raises
    RouterError."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise RouterError(f"HAProxy's show stat answered {text[:200]!r}, not CSV")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    servers: dict[str, ServerStat] = {}
    backend_row = None
    for row in reader:
        if row.get("pxname") != backend:
            continue
        kind = row.get("svname")
        if kind == "BACKEND":
            backend_row = row
        elif kind != "FRONTEND":
            servers[kind] = ServerStat(
                name=kind, status=row.get("status") or "", current=_int(row.get("scur")),
                queued=_int(row.get("qcur")), total=_int(row.get("stot")),
                failed=_int(row.get("econ")) + _int(row.get("eresp")),
                address=row.get("addr") or "")
    if backend_row is None:
        raise RouterError(f"HAProxy has no backend {backend!r}: is this the service's HAProxy?")
    # stot: every request dispatched (one stream each in HTTP mode, keep-alive or not),
    # counted when it arrives; req_tot counts them when they complete, later.
    return BackendStat(
        requests_total=_int(backend_row.get("stot")),
        queued=_int(backend_row.get("qcur")) + sum(s.queued for s in servers.values()),
        current=sum(s.current for s in servers.values()),
        responses_5xx=_int(backend_row.get("hrsp_5xx")),
        servers=servers)


@dataclass(frozen=True)
class ServerState:
    """One server of ``show servers state``."""

    name: str
    address: str
    port: int
    operational: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin: int  # bit mask (ADMIN_*)

    @property
    def maintenance(self) -> bool:
        return bool(self.admin & _ANY_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin & _ANY_DRAIN)

    @property
    def up(self) -> bool:
        return self.operational in (1, 2, 3)


def parse_servers_state(text: str, backend: str) -> dict[str, ServerState]:
    """``show servers state BACKEND`` (format version 1) -> {server name: state}."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise RouterError(f"HAProxy's show servers state answered {text[:200]!r} "
                          "(expected format version 1)")
    header = None
    states: dict[str, ServerState] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            header = line[1:].split()
            continue
        if header is None:
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") != backend:
            continue
        name = row.get("srv_name", "")
        states[name] = ServerState(name=name, address=row.get("srv_addr", ""),
                                   port=_int(row.get("srv_port")),
                                   operational=_int(row.get("srv_op_state")),
                                   admin=_int(row.get("srv_admin_state")))
    if header is None:
        raise RouterError(f"HAProxy's show servers state has no header: {text[:200]!r}")
    return states


def parse_info(text: str) -> dict[str, str]:
    """``show info`` -> {field: value}."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


@dataclass(frozen=True)
class LogRecord:
    """One request from HAProxy's log (``LOG_FORMAT``); times in ms (-1: not reached)."""

    queue_ms: int
    connect_ms: int
    response_ms: int
    total_ms: int
    status: int
    server: str
    termination: str
    retries: int

    @property
    def failed(self) -> bool:
        """The client got no good answer: a 5xx (HAProxy's 503 when no replica can
        take the request, 504 on a timeout...) or an aborted exchange."""
        return self.status >= 500 or self.status <= 0


def parse_log_line(line: str) -> LogRecord | None:
    """One raw log line -> LogRecord; None for anything else (start-up messages)."""
    fields = line.strip().split()
    if len(fields) != 8:
        return None
    try:
        queue_ms, connect_ms, response_ms, total_ms, status = (int(f) for f in fields[:5])
        retries = int(fields[7].lstrip("+"))
    except ValueError:
        return None
    return LogRecord(queue_ms, connect_ms, response_ms, total_ms, status, fields[5],
                     fields[6], retries)


# ------------------------------------------------------------------- runtime API


class HAProxyAdmin:
    """The runtime API over the admin socket: one connection per command. Thread-safe
    (nothing is shared between calls)."""

    def __init__(self, socket_path: str | os.PathLike, *, timeout_s: float = 5.0):
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        """Send one command, return HAProxy's whole answer."""
        if "\n" in line or ";" in line:
            raise RouterError(f"refusing to send {line!r}: one command, no ';' or newline")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(self.timeout_s)
                connection.connect(self.socket_path)
                connection.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
        except OSError as error:
            raise RouterError(f"HAProxy's admin socket {self.socket_path} did not answer "
                              f"{line.split()[0]!r} ({error.strerror or error}): is HAProxy "
                              "running? (`slurmkit serve status` shows it)") from None
        return b"".join(chunks).decode(errors="replace")

    def alive(self) -> bool:
        try:
            return "Pid:" in self.command("show info")
        except RouterError:
            return False

    def _expect(self, line: str, ok: Sequence[str] = ("",)) -> None:
        answer = self.command(line).strip()
        if answer not in ok:
            raise RouterError(f"HAProxy refused {line!r}: {answer[:300]}")

    def add_server(self, backend: str, name: str, address: str, port: int, *,
                   maxconn: int, inter_ms: int, fall: int, rise: int) -> None:
        """Add a server with health checks and make it take requests. A dynamic server
        starts in maintenance with its checks off; once set ready it is UP at once
        (HAProxy 3.0 does not wait for a first check): add only replicas whose readiness
        endpoint has just answered 200."""
        self._expect(f"add server {backend}/{name} {address}:{port} check inter {inter_ms} "
                     f"fall {fall} rise {rise} maxconn {maxconn}", ok=(_ADDED,))
        self._expect(f"enable health {backend}/{name}")
        self._expect(f"set server {backend}/{name} state ready")

    def set_state(self, backend: str, name: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"unknown server state {state!r}")
        self._expect(f"set server {backend}/{name} state {state}")

    def shutdown_sessions(self, backend: str, name: str) -> None:
        self._expect(f"shutdown sessions server {backend}/{name}")

    def delete_server(self, backend: str, name: str) -> bool:
        """Delete a server in maintenance; False while it still has connections or a
        queue (HAProxy refuses: try again once they are gone)."""
        answer = self.command(f"del server {backend}/{name}").strip()
        if answer == _DELETED:
            return True
        if "No such server" in answer:
            return True
        if answer.startswith(("Server still has connections", "Only servers in maintenance")):
            return False
        raise RouterError(f"HAProxy refused to delete {backend}/{name}: {answer[:300]}")

    def stat(self, backend: str) -> BackendStat:
        # type 6: the backend and its servers
        return parse_stat_csv(self.command(f"show stat {backend} 6 -1"), backend)

    def servers_state(self, backend: str) -> dict[str, ServerState]:
        return parse_servers_state(self.command(f"show servers state {backend}"), backend)

    def info(self) -> dict[str, str]:
        return parse_info(self.command("show info"))


# ------------------------------------------------------------------- process


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_in_use(address: str, port: int) -> str | None:
    """Why ``address:port`` cannot be bound (None when it can): checked before HAProxy
    starts, so that the message names the port."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                       socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def find_program(name: str) -> str:
    """``name`` on PATH, else in the sbin directories (Debian installs haproxy in
    /usr/sbin, which a user's login PATH leaves out); else ``name`` itself."""
    if os.sep in name:
        return name
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin") \
        or name


def start(spec: ServiceSpec, paths: Paths, *, timeout_s: float = 15.0) -> int:
    """Write the configuration and start HAProxy in the background (daemon mode), or
    find the one already serving this state directory. Returns its pid. A port in use,
    a bad configuration or a missing program is a UserInputError naming the fix."""
    admin = HAProxyAdmin(paths.socket, timeout_s=2.0)
    pid = read_pid(paths.pidfile)
    if pid_alive(pid) and admin.alive():
        return pid  # adopted: never restarted
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(render_config(spec, paths))
    reason = port_in_use(spec.router.bind_address, spec.router.listen_port)
    if reason:
        raise UserInputError(f"the router's port {spec.router.listen_port} on "
                             f"{spec.router.bind_address} cannot be used ({reason}): another "
                             "program listens there; choose another [router] listen_port")
    for stale in (paths.socket, paths.pidfile):
        stale.unlink(missing_ok=True)
    argv = [find_program(spec.router.haproxy), "-D", "-f", str(paths.config)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise UserInputError(f"{spec.router.haproxy} was not found: install HAProxy (Debian: "
                             "apt-get install haproxy) or set [router] haproxy to its path") \
            from None
    except subprocess.TimeoutExpired:
        raise RouterError(f"HAProxy did not start within {timeout_s:g} s") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[-600:]
        raise UserInputError(f"HAProxy refused to start with {paths.config}: {detail}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = read_pid(paths.pidfile)
        if pid_alive(pid) and admin.alive():
            return pid
        time.sleep(0.05)
    raise RouterError(f"HAProxy started but its admin socket {paths.socket} did not answer "
                      f"within {timeout_s:g} s")


def stop(paths: Paths, *, timeout_s: float = 10.0) -> bool:
    """Stop the service's HAProxy (SIGUSR1: finish the requests in flight, then exit;
    SIGTERM after ``timeout_s``). False when none was running."""
    pid = read_pid(paths.pidfile)
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
    paths.pidfile.unlink(missing_ok=True)
    return True
