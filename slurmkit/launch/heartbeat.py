"""Peer-loss detection inside the job, independent of Slurm's own.

Slurm learns that a node died when it misses ``SlurmdTimeout`` (300 s by default) of
pings. The job learns it in about a second: every rank keeps one TCP connection to
the launch supervisor (``slurmkit.launch``, in the batch step) and both ends send a
heartbeat every ``interval_s``. The supervisor declares a rank lost when

- its connection closes without a goodbye (the process died: the kernel of a live
  node closes its sockets at once), or
- nothing arrived from it for ``timeout_s`` (the node died or was cut off).

A rank that hears nothing from the supervisor for ``timeout_s`` takes the batch host
for lost (the job then goes down the requeue path).

**What is not a loss.** A slow rank still sends heartbeats: they come from their own
thread, not from the training loop, so a long step, a collective waiting on a
straggler or a busy CPU do not stop them. Only a process that cannot run at all for
``timeout_s`` (SIGSTOP, a node frozen that long) is declared lost. The default
timeout is 1.5 s with a heartbeat every 0.2 s: seven heartbeats must be missed in a
row. Both are set with ``SLURMKIT_PEER_TIMEOUT_S`` and ``SLURMKIT_HEARTBEAT_S``
(docs/survive.md has the measured margins).

Wire format: one JSON object per line, UTF-8, at most ``MAX_LINE`` bytes. Rank to
supervisor: ``hello`` (rank, host, pid, attempt, step id), ``hb`` (last completed
step), ``bye`` (``why``: done, exit, triggered; with the step it saved). Supervisor
to rank: ``hb``, ``checkpoint`` (write the triggered checkpoint now, then exit),
``ack`` (of a goodbye: the supervisor is alive and takes it from there).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_INTERVAL_S = 0.2
SLURMD_PORT = 6818  # Slurm's default SlurmdPort
DEFAULT_TIMEOUT_S = 1.5
MAX_LINE = 4096


def interval_from_env(environ=os.environ) -> float:
    return _positive_float(environ.get("SLURMKIT_HEARTBEAT_S"), DEFAULT_INTERVAL_S)


def timeout_from_env(environ=os.environ) -> float:
    return _positive_float(environ.get("SLURMKIT_PEER_TIMEOUT_S"), DEFAULT_TIMEOUT_S)


def _positive_float(text: str | None, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if 0 < value < 3600 else default


def slurmd_port_from_env(environ=os.environ) -> int:
    """slurmd's port for liveness probes (SLURMKIT_SLURMD_PORT, exported by the
    supervisor; Slurm's default 6818)."""
    text = environ.get("SLURMKIT_SLURMD_PORT", "")
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 65536 \
        else SLURMD_PORT


def node_answers(host: str, port: int, timeout_s: float) -> bool:
    """Does ``host`` accept a TCP connection on ``port`` (slurmd's)? A crashed or
    cut-off node does not; one whose processes merely died does."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Splits a byte stream into JSON messages. ``ok`` turns False for good at a line
    that is not a JSON object or is longer than MAX_LINE (the peer misbehaves); the
    messages before it are still returned."""

    def __init__(self) -> None:
        self._buffer = b""
        self.ok = True

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if not self.ok:
            return []
        self._buffer += data
        messages = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self.ok = False
                return messages
            messages.append(message)
        if len(self._buffer) > MAX_LINE:
            self.ok = False
        return messages


# ------------------------------------------------------------------ rank side


class SupervisorLink:
    """A rank's connection to the supervisor, kept by a daemon thread.

    ``on_checkpoint(reason)`` is called (in a thread of its own, so heartbeats go on
    while the checkpoint is written) when the supervisor asks for the triggered
    checkpoint; ``on_supervisor_lost(reason)`` when the supervisor fell silent or
    closed the connection without telling us why. ``step_fn`` gives the last
    completed step for the heartbeats. Thread-safe.
    """

    def __init__(self, address: tuple[str, int], hello: dict[str, Any], *,
                 step_fn: Callable[[], int | None],
                 on_checkpoint: Callable[[str], None],
                 on_supervisor_lost: Callable[[str], None],
                 interval_s: float = DEFAULT_INTERVAL_S, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = 60.0):
        self.address, self.hello = address, dict(hello)
        self.step_fn = step_fn
        self.on_checkpoint, self.on_supervisor_lost = on_checkpoint, on_supervisor_lost
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._socket: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._connected = threading.Event()
        self.max_gap_s = 0.0  # longest silence seen from the supervisor (diagnostics)
        self.last_heard = 0.0  # monotonic time of the supervisor's last message
        self.lost_reason: str | None = None
        self._bye_sent_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="slurmkit-heartbeat",
                                        daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def supervisor_alive(self, wait_s: float) -> bool:
        """After our goodbye: True once the supervisor answered it (an ``ack``, or any
        message since) within ``wait_s``; False when it is lost or stays silent."""
        asked = self._bye_sent_at or time.monotonic()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.lost_reason is not None:
                return False
            if self.last_heard > asked:
                return True
            time.sleep(0.02)
        return False

    def goodbye(self, why: str, **fields) -> None:
        """Tell the supervisor this rank is leaving on purpose; stop sending (the
        connection still hears the supervisor, for ``supervisor_alive``)."""
        if self._closed.is_set():
            return
        self._bye_sent_at = time.monotonic()
        self._send({"t": "bye", "why": why, **fields})
        self._closed.set()

    def _send(self, message: dict[str, Any]) -> bool:
        with self._send_lock:
            if self._socket is None:
                return False
            try:
                self._socket.sendall(encode(message))
                return True
            except OSError:
                return False

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self.connect_timeout_s
        while not self._closed.is_set():
            try:
                connection = socket.create_connection(self.address, timeout=2.0)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return connection
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.1)
        return None

    def _lost(self, reason: str) -> None:
        self.lost_reason = reason
        if self._closed.is_set():
            return  # we said goodbye: nothing to do about it
        self._closed.set()
        threading.Thread(target=self.on_supervisor_lost, args=(reason,),
                         name="slurmkit-supervisor-lost", daemon=True).start()

    def _run(self) -> None:
        connection = self._connect()
        if connection is None:
            self._lost(f"cannot reach the supervisor at {self.address[0]}:{self.address[1]}")
            return
        with self._send_lock:
            self._socket = connection
        self._send({"t": "hello", **self.hello, "step": self.step_fn()})
        self._connected.set()
        reader = LineReader()
        last_heard = last_sent = time.monotonic()
        connection.setblocking(False)
        poller = selectors.DefaultSelector()
        poller.register(connection, selectors.EVENT_READ)
        try:
            while self.lost_reason is None:
                now = time.monotonic()
                send_at = last_sent + self.interval_s if not self._closed.is_set() \
                    else float("inf")  # after our goodbye we only listen
                wait_s = max(0.0, min(send_at - now, last_heard + self.timeout_s - now))
                ready = poller.select(wait_s)
                now = time.monotonic()
                if ready:
                    try:
                        data = connection.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError as error:
                        self._lost(f"connection to the supervisor failed: {error}")
                        return
                    if data == b"":
                        self._lost("the supervisor closed the connection")
                        return
                    if data:
                        messages = reader.feed(data)
                        if not reader.ok:
                            self._lost("the supervisor sent garbage")
                            return
                        self.max_gap_s = max(self.max_gap_s, now - last_heard)
                        last_heard = self.last_heard = now
                        for message in messages:
                            if message.get("t") == "checkpoint":
                                threading.Thread(
                                    target=self.on_checkpoint,
                                    args=(str(message.get("reason", "supervisor")),),
                                    name="slurmkit-checkpoint-request", daemon=True).start()
                if now - last_heard > self.timeout_s:
                    self._lost(f"no heartbeat from the supervisor for "
                               f"{now - last_heard:.1f} s")
                    return
                if now - last_sent >= self.interval_s and not self._closed.is_set():
                    if not self._send({"t": "hb", "step": self.step_fn()}) \
                            and not self._closed.is_set():
                        self._lost("cannot send to the supervisor")
                        return
                    last_sent = now
        finally:
            poller.close()


# ------------------------------------------------------------ supervisor side


def _listen(host: str | None, port: int) -> socket.socket:
    """Listen on every address, IPv6 and IPv4 on one port where the host can: the ranks
    connect to the batch host by name, which may resolve to either, and a port held
    on IPv4 only could be someone else's on IPv6 (a rank would then talk to a stranger)."""
    if host is None:
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(("::", port), family=socket.AF_INET6,
                                            dualstack_ipv6=True, backlog=1024)
            except OSError:
                pass  # IPv6 present but unusable (e.g. disabled in a container)
        host = "0.0.0.0"
    return socket.create_server((host, port), backlog=1024)


@dataclass
class Peer:
    """What the supervisor knows of one connected rank."""

    connection: socket.socket
    rank: int | None = None
    host: str | None = None
    pid: int | None = None
    step_id: str | None = None
    step: int | None = None
    first_step: int | None = None  # the step it started from (restored), once known
    last_heard: float = field(default_factory=time.monotonic)
    last_heard_epoch_s: float = field(default_factory=time.time)
    bye: dict[str, Any] | None = None
    lost: str | None = None  # why it is lost; None while alive or after a goodbye
    closed: bool = False
    max_gap_s: float = 0.0
    reader: LineReader = field(default_factory=LineReader)

    @property
    def progressed(self) -> bool:
        """Completed a step since it started (or restored)."""
        return self.first_step is not None and isinstance(self.step, int) \
            and self.step > self.first_step

    def note_step(self, step: Any) -> None:
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
            if self.first_step is None:
                self.first_step = step


class Monitor:
    """The supervisor's end: accepts the ranks of the current attempt, sends
    heartbeats, and says which ranks are lost. Single-threaded: the supervisor's
    loop calls ``poll`` every few tens of milliseconds."""

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S, host: str | None = None, port: int = 0):
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.listener = _listen(host, port)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.attempt = 0
        self.peers: list[Peer] = []
        self._last_beat = 0.0

    def start_attempt(self, attempt: int) -> None:
        """Forget the previous attempt's ranks (their connections are closed)."""
        for peer in self.peers:
            self._close(peer)
        self.peers = []
        self.attempt = attempt

    def by_rank(self) -> dict[int, Peer]:
        return {peer.rank: peer for peer in self.peers if peer.rank is not None}

    def lost(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.lost]

    def alive(self) -> list[Peer]:
        return [peer for peer in self.peers if not peer.lost and peer.bye is None
                and peer.rank is not None]

    def poll(self, wait_s: float) -> None:
        for key, _ in self.selector.select(wait_s):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)
        now = time.monotonic()
        if now - self._last_beat >= self.interval_s:
            self._last_beat = now
            # Ranks that said goodbye hear us too, until they exit: they ask whether
            # the supervisor is still there before they leave.
            for peer in self.peers:
                if peer.rank is not None and not peer.closed and not peer.lost:
                    self._send(peer, {"t": "hb"})
        for peer in self.peers:
            if peer.rank is not None and not peer.lost and peer.bye is None \
                    and now - peer.last_heard > self.timeout_s:
                peer.lost = f"silent for {now - peer.last_heard:.1f} s"
                self._close(peer)

    def request_checkpoint(self, reason: str) -> list[int]:
        """Ask every live rank for the triggered checkpoint; the ranks asked."""
        asked = []
        for peer in self.alive():
            if self._send(peer, {"t": "checkpoint", "reason": reason}):
                asked.append(peer.rank)
        return asked

    def close(self) -> None:
        for peer in self.peers:
            self._close(peer)
        self.selector.close()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = Peer(connection)
            self.peers.append(peer)
            self.selector.register(connection, selectors.EVENT_READ, peer)

    def _read(self, peer: Peer) -> None:
        try:
            data = peer.connection.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            data = b""  # its kernel reset the connection: the process died
            reason = "connection reset without a goodbye (the process died)"
        except OSError as error:
            data = b""
            reason = f"connection failed: {error}"
        else:
            reason = "connection closed without a goodbye (the process died)"
        now = time.monotonic()
        if data == b"":
            if peer.bye is None and peer.rank is not None:
                peer.lost = reason
            self._close(peer)
            return
        messages = peer.reader.feed(data)
        peer.max_gap_s = max(peer.max_gap_s, now - peer.last_heard)
        peer.last_heard, peer.last_heard_epoch_s = now, time.time()
        for message in messages:
            kind = message.get("t")
            if kind == "hello":
                if message.get("attempt") != self.attempt or \
                        not isinstance(message.get("rank"), int):
                    self._close(peer)  # an orphan of an earlier attempt
                    self.peers.remove(peer)
                    return
                peer.rank, peer.host = message["rank"], str(message.get("host", ""))
                peer.pid = message.get("pid")
                peer.step_id = message.get("step_id")
                peer.note_step(message.get("step"))
            elif kind == "hb":
                peer.note_step(message.get("step"))
            elif kind == "bye":
                peer.bye = message
                peer.note_step(message.get("step"))
                self._send(peer, {"t": "ack"})  # the rank asks: is the supervisor alive?
        if not peer.reader.ok:
            if peer.rank is not None and peer.bye is None:
                peer.lost = "sent garbage"
            self._close(peer)

    def _send(self, peer: Peer, message: dict[str, Any]) -> bool:
        try:
            peer.connection.send(encode(message))
            return True
        except (BlockingIOError, InterruptedError):
            return True  # the buffer is full: the peer is slow, not lost
        except OSError:
            return False

    def _close(self, peer: Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        try:
            self.selector.unregister(peer.connection)
        except (KeyError, ValueError):
            pass
        try:
            peer.connection.close()
        except OSError:
            pass
