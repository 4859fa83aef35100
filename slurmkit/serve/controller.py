"""The controller of a service: a thin loop around the pure scaler.

Every ``interval_s``: read the replica jobs from ``squeue --json`` (they are named
``serve-<name>`` and carry a ``slurmkit-serve`` comment with their port), the servers
and counters from HAProxy, and the requests' latencies from HAProxy's log; put every
running replica whose readiness endpoint answers 200 into HAProxy; take out replicas
that are gone or failing their health checks; let ``scaler.decide`` choose the count;
submit or remove replicas to reach it. A replica is removed in three steps: drained
(HAProxy sends it no new request), deleted from HAProxy once its last request is
answered, then cancelled in Slurm. No request in flight fails because a replica is
removed.

Nothing lives only in this process: after a restart the controller finds its jobs in
squeue and its servers in HAProxy (``adopt``). Timings of a restarted controller's
replicas that were pending at the restart start at their submission.

Failures are bounded: a replica that ends or stays unready for ``ready_timeout_s``
counts as a failed start; after ``max_start_failures`` in a row the service is stopped
(every replica job cancelled, HAProxy stopped) with an error naming the last replica's
output. A submission Slurm refuses (the policy's message, e.g. a class the queue may not
use) stops it at once.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from slurmkit.errors import (
    CommandTimeoutError,
    ControllerUnreachableError,
    RouterError,
    SlurmCommandError,
    SlurmkitError,
    UserInputError,
)
from slurmkit.serve import haproxy, scaler
from slurmkit.serve.spec import ServiceSpec
from slurmkit.serve.state import StateDir, append_event, read_control, write_json
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.models import Job

#: The tag at the start of every replica job's comment.
COMMENT_TAG = "slurmkit-serve"
#: Replica jobs in these states have left (or are leaving) the service.
GONE_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                         "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "COMPLETING"})
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                            "REQUEUE_FED", "SUSPENDED"})
#: A replica failing its health checks this long is replaced (its node is probably gone).
LOST_AFTER_S = 5.0
#: Latencies kept for the window (at most this many requests).
MAX_LATENCIES = 200_000


class ServiceFailed(SlurmkitError):
    """The service could not be kept up (its replicas keep failing to start)."""


def comment_for(service: str, port: int) -> str:
    return f"{COMMENT_TAG} service={service} port={port}"


def parse_comment(comment: str) -> dict[str, str] | None:
    """{"service", "port"} from a replica job's comment; None for other jobs."""
    words = comment.split()
    if not words or words[0] != COMMENT_TAG:
        return None
    fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    if "service" not in fields or not fields.get("port", "").isdigit():
        return None
    return fields


@dataclass
class Replica:
    """What the controller knows about one replica job (rebuilt from squeue and HAProxy
    after a restart; the timings only while it ran the whole time)."""

    job_id: int
    port: int
    state: str = "pending"
    since_s: float = 0.0
    node: str = ""
    address: str = ""
    borrowed: bool = False
    decided_epoch_s: float | None = None
    submitted_epoch_s: float | None = None
    reclaim_seen_epoch_s: float | None = None
    start_epoch_s: float | None = None
    listening_epoch_s: float | None = None
    ready_epoch_s: float | None = None
    drain_since_s: float | None = None
    down_since_s: float | None = None
    removing: bool = False  # drained or cancelled by the controller: its end is no failure
    seen_up: bool = False  # HAProxy has had it UP since it was added

    @property
    def server(self) -> str:
        return f"r{self.job_id}"


def http_probe(address: str, port: int, path: str, timeout_s: float = 1.0) -> int | None:
    """The HTTP status of GET path on address:port; None when nothing answers."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def resolve(node: str) -> str:
    try:
        return socket.gethostbyname(node)
    except OSError:
        return node


class LogCollector:
    """Reads HAProxy's per-request log lines from a UNIX datagram socket in a thread:
    (monotonic time, total ms) of every request, and the failed ones."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.clock = clock
        self.latencies: deque[tuple[float, float]] = deque(maxlen=MAX_LATENCIES)
        self.requests = 0
        self.failed = 0
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._socket.settimeout(0.5)
        self._thread = threading.Thread(target=self._read, name="haproxy-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        sock = self._socket
        while sock is not None and sock.fileno() >= 0:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            record = haproxy.parse_log_line(data.decode(errors="replace"))
            if record is None:
                continue
            with self._lock:
                self.requests += 1
                if record.failed:
                    self.failed += 1
                if record.total_ms >= 0:
                    self.latencies.append((self.clock(), float(record.total_ms)))

    def snapshot(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self.latencies)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.path.unlink(missing_ok=True)


@dataclass
class Clock:
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Controller:
    """One service's controller. ``run`` loops until a stop is requested; ``step`` is
    one pass (the unit tests drive it with fakes for Slurm, HAProxy and the probe)."""

    spec: ServiceSpec
    client: SlurmClient
    user: str
    admin: haproxy.HAProxyAdmin | None = None
    probe: Callable[[str, int, str], int | None] = http_probe
    resolve: Callable[[str], str] = resolve
    clock: Clock = field(default_factory=Clock)
    say: Callable[[str], None] = print
    replicas: dict[int, Replica] = field(default_factory=dict)
    scaler_state: scaler.ScalerState = field(default_factory=scaler.ScalerState)
    samples: deque = field(default_factory=lambda: deque(maxlen=4096))
    latencies: Callable[[], list[tuple[float, float]]] = list
    start_failures: int = 0
    last_failure: str = ""
    next_submit_s: float = 0.0
    decision: scaler.Decision | None = None
    load: scaler.Load | None = None
    reclaiming: bool = False
    submitted_any: bool = False

    def __post_init__(self):
        self.state = StateDir(Path(self.spec.state_dir))
        self.paths = haproxy.Paths(Path(self.spec.state_dir))
        if self.admin is None:
            self.admin = haproxy.HAProxyAdmin(self.paths.socket)

    # ---------------------------------------------------------------- events

    def event(self, name: str, **fields) -> None:
        record = append_event(self.state.events, name, service=self.spec.name, **fields)
        shown = " ".join(f"{k}={v}" for k, v in record.items()
                         if k not in ("event", "time_epoch_s", "service"))
        self.say(f"serve {self.spec.name}: {name} {shown}".rstrip())

    # ---------------------------------------------------------------- Slurm

    def replica_jobs(self) -> list[Job]:
        """This service's jobs in the queue: name serve-<name> and our comment."""
        jobs = self.client.jobs(users=[self.user])
        mine = []
        for job in jobs:
            fields = parse_comment(job.comment)
            if job.name == self.spec.job_name and fields and fields["service"] == self.spec.name:
                mine.append(job)
        return mine

    def preemption_in_progress(self) -> bool:
        """True when some running job is in its preemption grace time: a pending
        replica is then waiting for borrowed capacity to be handed back."""
        return any(job.preempt_epoch_s for job in self.client.jobs(states=["RUNNING"]))

    def _free_port(self) -> int | None:
        used = {replica.port for replica in self.replicas.values()}
        for port in self.spec.ports:
            if port not in used:
                return port
        return None

    def replica_script(self, port: int) -> str:
        from slurmkit.render import render_script
        from slurmkit.spec import JobSpec

        spec = self.spec
        job = JobSpec(
            kind="inference", job_name=spec.job_name, command=spec.argv_for(port),
            nodes_min=1, nodes_max=1, ntasks_per_node=1, cpus_per_task=spec.cpus_per_replica,
            gpus_per_node=spec.gpus_per_replica, account=spec.account, qos=spec.qos,
            partition=spec.partition, time_limit_min=spec.time_limit_min,
            env=(*spec.env, ("SLURMKIT_SERVE_NAME", spec.name)), chdir=spec.chdir,
            output=None, requeue=True, placement="none", signal="USR2", signal_lead_s=60,
            port=port)
        return render_script(job)

    def submit_args(self, port: int) -> list[str]:
        """sbatch flags beside the script (they override its #SBATCH lines): the comment
        that marks the job as this service's replica, and the per-job output file (a
        pattern: the script's --output would be taken literally)."""
        return ["--comment", comment_for(self.spec.name, port),
                f"--output={self.spec.replica_output}"]

    def submit(self, decided_epoch_s: float) -> Replica | None:
        port = self._free_port()
        if port is None:
            return None
        script = self.replica_script(port)
        try:
            result = self.client.submit(script, self.submit_args(port))
        except (ControllerUnreachableError, CommandTimeoutError) as error:
            self.say(f"serve {self.spec.name}: submission failed, retrying: {error}")
            return None
        except SlurmCommandError as error:
            raise UserInputError(
                f"Slurm refused the replica job of service {self.spec.name}: {error.stderr}. "
                f"Fix account/qos/partition/gpus_per_replica in {self.spec.source}") from None
        now = self.clock.monotonic()
        replica = Replica(job_id=result.job_id, port=port, state="pending", since_s=now,
                          decided_epoch_s=decided_epoch_s, submitted_epoch_s=self.clock.wall())
        self.replicas[replica.job_id] = replica
        self.submitted_any = True
        self.event("replica-submitted", job_id=replica.job_id, port=port)
        return replica

    def cancel(self, replica: Replica, why: str) -> None:
        replica.removing = True
        try:
            self.client.cancel([replica.job_id])
        except (ControllerUnreachableError, CommandTimeoutError):
            return  # tried again next pass: the job is still ours
        except SlurmCommandError:
            pass  # already gone
        self.event("replica-cancelled", job_id=replica.job_id, reason=why)

    # ---------------------------------------------------------------- HAProxy

    def remove_server(self, replica: Replica | str, *, force: bool = False) -> bool:
        """Take a replica (or a server by name) out of HAProxy: maintenance, then delete
        (after its last request, unless ``force``: then its connections are shut). True
        once gone."""
        backend = self.spec.backend
        name = replica if isinstance(replica, str) else replica.server
        with contextlib.suppress(RouterError):
            self.admin.set_state(backend, name, "maint")
        if force:
            with contextlib.suppress(RouterError):
                self.admin.shutdown_sessions(backend, name)
        try:
            return self.admin.delete_server(backend, name)
        except RouterError as error:
            self.say(f"serve {self.spec.name}: {error}")
            return False

    # ---------------------------------------------------------------- one pass

    def adopt(self) -> None:
        """Rebuild the replicas from squeue and HAProxy (a restarted controller)."""
        servers = self.admin.servers_state(self.spec.backend)
        now = self.clock.monotonic()
        for job in self.replica_jobs():
            fields = parse_comment(job.comment)
            replica = Replica(job_id=job.job_id, port=int(fields["port"]), since_s=now,
                              submitted_epoch_s=job.submit_epoch_s,
                              start_epoch_s=job.start_epoch_s)
            server = servers.get(replica.server)
            if server is not None and server.draining:
                replica.state, replica.drain_since_s, replica.removing = "draining", now, True
            self.replicas[job.job_id] = replica
        orphans = [name for name in servers if not (name.startswith("r") and name[1:].isdigit()
                                                     and int(name[1:]) in self.replicas)]
        for name in orphans:
            self.remove_server(name, force=True)
        if self.replicas or servers:
            self.event("adopted", replicas=sorted(self.replicas), servers=sorted(servers))

    def step(self) -> scaler.Decision:
        now = self.clock.monotonic()
        jobs = {job.job_id: job for job in self.replica_jobs()}
        servers = self.admin.servers_state(self.spec.backend)
        stat = self.admin.stat(self.spec.backend)
        self.samples.append(scaler.LoadSample(now, stat.requests_total, stat.current,
                                              stat.queued))
        self._follow_jobs(jobs, servers, now)
        self._finish_drains(stat, now)
        self.load = scaler.window_load(self.samples, self.latencies(), now_s=now,
                                       window_s=self.spec.scaling.window_s,
                                       latency_percentile=self.spec.latency_percentile)
        control = read_control(self.state)
        pinned = control.get("pinned")
        pinned = pinned if isinstance(pinned, int) and not isinstance(pinned, bool) else None
        self.scaler_state = replace(self.scaler_state, pinned=pinned)
        views = [scaler.ReplicaView(r.job_id, r.state, r.borrowed, r.since_s)
                 for r in self.replicas.values()]
        decision, self.scaler_state = scaler.decide(
            self.spec.scaling, replicas_min=self.spec.replicas_min,
            replicas_max=self.spec.replicas_max, latency_target_ms=self.spec.latency_target_ms,
            load=self.load, replicas=views, state=self.scaler_state, now_s=now)
        if decision.action != "hold" and (self.decision is None
                                          or decision.target != self.decision.target):
            self.event("scale", action=decision.action, target=decision.target,
                       reason=decision.reason)
        self.decision = decision
        self._apply(decision, views, now)
        self.write_status()
        return decision

    def _follow_jobs(self, jobs: dict[int, Job], servers: dict[str, haproxy.ServerState],
                     now: float) -> None:
        # Jobs that left the queue.
        for job_id in [j for j in self.replicas if j not in jobs]:
            replica = self.replicas.pop(job_id)
            if replica.server in servers:
                self.remove_server(replica, force=True)
            if not replica.removing:
                self._failed(replica, "its job left the queue before it was removed"
                             if replica.ready_epoch_s is None else None)
        # Jobs the controller did not submit (a second controller, a restart race).
        for job_id, job in jobs.items():
            if job_id not in self.replicas:
                fields = parse_comment(job.comment)
                self.replicas[job_id] = Replica(job_id=job_id, port=int(fields["port"]),
                                                since_s=now, submitted_epoch_s=job.submit_epoch_s)
        pending = [r for r in self.replicas.values()
                   if jobs[r.job_id].state in PENDING_STATES]
        self.reclaiming = bool(pending) and self.preemption_in_progress()
        for replica in list(self.replicas.values()):
            job = jobs[replica.job_id]
            server = servers.get(replica.server)
            replica.borrowed = job.partition.startswith("borrow-")
            if job.state in PENDING_STATES:
                if server is not None:  # requeued after it served: take it out
                    self.remove_server(replica, force=True)
                if replica.state in ("ready", "starting", "down"):
                    self.event("replica-requeued", job_id=replica.job_id, reason=job.reason)
                    replica.ready_epoch_s = replica.listening_epoch_s = None
                    replica.start_epoch_s = None
                new_state = "reclaiming" if self.reclaiming else "pending"
                if new_state == "reclaiming" and replica.reclaim_seen_epoch_s is None:
                    replica.reclaim_seen_epoch_s = self.clock.wall()
                self._set(replica, new_state, now)
                continue
            if job.state in GONE_STATES and replica.state != "draining":
                # Ending (preempted, failed, its node lost): out of the balance now; its
                # end is judged when it leaves the queue.
                if server is not None:
                    self.remove_server(replica, force=True)
                self._set(replica, "draining", now)
                continue
            if job.state != "RUNNING" or replica.state == "draining":
                continue
            node = job.nodes[0] if job.nodes else job.batch_host
            if replica.node != node:
                replica.node, replica.address = node, self.resolve(node)
            if replica.start_epoch_s is None:
                replica.start_epoch_s = job.start_epoch_s or self.clock.wall()
            if server is not None and (server.address, server.port) != (replica.address,
                                                                         replica.port):
                self.remove_server(replica, force=True)  # it moved: re-added when ready
                server = None
            if server is None:
                self._check_ready(replica, now)
            elif server.draining:
                replica.removing = True
                replica.drain_since_s = replica.drain_since_s or now
                self._set(replica, "draining", now)
            elif server.up:
                self._set(replica, "ready", now)
                replica.seen_up, replica.down_since_s = True, None
            elif server.maintenance:
                self._set(replica, "down", now)  # an operator's maintenance: left alone
            else:
                if not replica.seen_up:
                    # Added, its first health checks not passed yet.
                    self._set(replica, "starting", now)
                elif replica.state != "down":
                    self.event("replica-down", job_id=replica.job_id, node=replica.node)
                    replica.down_since_s = now
                    self._set(replica, "down", now)
                if now - (replica.down_since_s or now) >= LOST_AFTER_S:
                    self.event("replica-lost", job_id=replica.job_id, node=replica.node)
                    self.remove_server(replica, force=True)
                    self.cancel(replica, "failing health checks")
                    replica.state = "draining"  # out of the count until the job is gone

    def _set(self, replica: Replica, state: str, now: float) -> None:
        if replica.state != state:
            replica.state, replica.since_s = state, now

    def _check_ready(self, replica: Replica, now: float) -> None:
        status = self.probe(replica.address, replica.port, self.spec.readiness_path)
        if status is not None and replica.listening_epoch_s is None:
            replica.listening_epoch_s = self.clock.wall()
        if status == 200:
            router = self.spec.router
            try:
                self.admin.add_server(self.spec.backend, replica.server, replica.address,
                                      replica.port, maxconn=router.slots_per_replica,
                                      inter_ms=router.health_interval_ms,
                                      fall=router.health_fall, rise=router.health_rise)
            except RouterError as error:
                self.say(f"serve {self.spec.name}: {error}")
                return
            replica.ready_epoch_s = self.clock.wall()
            # Counted as lost if its health checks never pass within LOST_AFTER_S.
            replica.seen_up, replica.down_since_s = False, now
            self._set(replica, "ready", now)
            self.start_failures = 0
            self.event("replica-ready", **self.timings(replica))
            return
        self._set(replica, "starting", now)
        started_at = replica.start_epoch_s or self.clock.wall()
        if self.clock.wall() - started_at > self.spec.ready_timeout_s:
            self.cancel(replica, f"not ready {self.spec.ready_timeout_s:g} s after it started")
            replica.state = "draining"
            self._failed(replica, f"not ready within ready_timeout_s = "
                                  f"{self.spec.ready_timeout_s:g} s (last answer: "
                                  f"{status if status is not None else 'no connection'})")

    def timings(self, replica: Replica) -> dict:
        """A replica's way from the decision to serving, in seconds: waiting in Slurm's
        queue (for free capacity, or for a preempted job's grace time when Slurm was
        reclaiming borrowed capacity), starting (the job running until its server
        answers) and readiness (until its readiness endpoint says 200)."""
        out = {"job_id": replica.job_id, "node": replica.node, "port": replica.port,
               "borrowed": replica.borrowed}
        decided = replica.decided_epoch_s or replica.submitted_epoch_s
        start, listening, ready = (replica.start_epoch_s, replica.listening_epoch_s,
                                   replica.ready_epoch_s)
        if decided and start:
            wait = max(0.0, start - decided)
            grace = 0.0
            if replica.reclaim_seen_epoch_s is not None:
                grace = max(0.0, min(wait, start - replica.reclaim_seen_epoch_s))
            out.update(wait_s=round(wait, 3), grace_wait_s=round(grace, 3),
                       queue_wait_s=round(wait - grace, 3))
        if start and listening:
            out["start_s"] = round(max(0.0, listening - start), 3)
        if listening and ready:
            out["readiness_s"] = round(max(0.0, ready - listening), 3)
        if decided and ready:
            out["decision_to_ready_s"] = round(max(0.0, ready - decided), 3)
        out["adopted"] = replica.decided_epoch_s is None
        return out

    def _failed(self, replica: Replica, why: str | None) -> None:
        """A replica ended (or was given up) without being removed by the controller."""
        if why is None:  # it had served: lost (node failure...), replaced by the scaler
            self.event("replica-lost", job_id=replica.job_id, node=replica.node)
            return
        self.start_failures += 1
        tail = self.output_tail(replica.job_id)
        self.last_failure = (f"replica job {replica.job_id}"
                             f"{' on ' + replica.node if replica.node else ''} {why}"
                             f"{'; its output ends: ' + tail if tail else ''}")
        backoff = min(60.0, 2.0 ** self.start_failures)
        self.next_submit_s = self.clock.monotonic() + backoff
        self.event("replica-failed", job_id=replica.job_id, reason=why,
                   failures=self.start_failures, retry_in_s=backoff, output=tail)
        if self.start_failures >= self.spec.max_start_failures:
            raise ServiceFailed(
                f"service {self.spec.name}: {self.start_failures} replicas in a row failed "
                f"to start (max_start_failures = {self.spec.max_start_failures}); the last: "
                f"{self.last_failure}. Check the server command, its port and readiness_path "
                f"in {self.spec.source}")

    def output_tail(self, job_id: int, max_chars: int = 300) -> str:
        path = Path(self.spec.replica_output.replace("%j", str(job_id)).replace("%%", "%"))
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 4096))
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-max_chars:]

    def _finish_drains(self, stat: haproxy.BackendStat, now: float) -> None:
        for replica in list(self.replicas.values()):
            if replica.state != "draining" or replica.drain_since_s is None:
                continue
            server = stat.servers.get(replica.server)
            idle = server is None or (server.current == 0 and server.queued == 0)
            overdue = now - replica.drain_since_s >= self.spec.drain_timeout_s
            if not (idle or overdue):
                continue
            if server is not None and not self.remove_server(replica, force=overdue):
                continue
            if overdue and not idle:
                self.event("replica-drain-timeout", job_id=replica.job_id,
                           requests=server.current if server else 0)
            replica.drain_since_s = None
            self.event("replica-drained", job_id=replica.job_id,
                       drained_s=round(now - replica.since_s, 3))
            self.cancel(replica, "scaled down")

    def _apply(self, decision: scaler.Decision, views, now: float) -> None:
        active = sum(1 for v in views if v.state in scaler.ACTIVE_STATES)
        if decision.target > active:
            if now < self.next_submit_s:
                return
            decided = self.clock.wall()
            for _ in range(decision.target - active):
                if self.submit(decided) is None:
                    break
        elif decision.target < active:
            for job_id in scaler.victims(views, active - decision.target):
                self.remove(self.replicas[job_id], "scaled down")

    def remove(self, replica: Replica, why: str) -> None:
        """Drain a serving replica (cancelled after its last request); cancel one that
        serves nothing yet."""
        replica.removing = True
        if replica.state == "ready":
            try:
                self.admin.set_state(self.spec.backend, replica.server, "drain")
            except RouterError as error:
                self.say(f"serve {self.spec.name}: {error}")
                return
            replica.drain_since_s = self.clock.monotonic()
            self._set(replica, "draining", replica.drain_since_s)
            self.event("replica-draining", job_id=replica.job_id, reason=why)
            return
        self.remove_server(replica, force=True)
        self.cancel(replica, why)
        self._set(replica, "draining", self.clock.monotonic())

    # ---------------------------------------------------------------- status

    def status(self) -> dict:
        load = self.load
        decision = self.decision
        return {
            "service": self.spec.name,
            "updated_epoch_s": round(self.clock.wall(), 3),
            "controller_pid": os.getpid(),
            "router": {"listen_port": self.spec.router.listen_port,
                       "backend": self.spec.backend},
            "replicas_min": self.spec.replicas_min, "replicas_max": self.spec.replicas_max,
            "target": decision.target if decision else None,
            "action": decision.action if decision else None,
            "reason": decision.reason if decision else None,
            "pinned": self.scaler_state.pinned,
            "reclaiming": self.reclaiming,
            "start_failures": self.start_failures, "last_failure": self.last_failure,
            "load": None if load is None else {
                "rate_per_s": round(load.rate_per_s, 3), "inflight": round(load.inflight, 3),
                "queued": round(load.queued, 3), "latency_ms": load.latency_ms,
                "latency_percentile": self.spec.latency_percentile,
                "latency_target_ms": self.spec.latency_target_ms},
            "replicas": [{"job_id": r.job_id, "state": r.state, "node": r.node,
                          "port": r.port, "borrowed": r.borrowed}
                         for r in sorted(self.replicas.values(), key=lambda r: r.job_id)],
        }

    def write_status(self) -> None:
        write_json(self.state.status, self.status())

    # ---------------------------------------------------------------- life

    def stop_service(self, *, timeout_s: float | None = None) -> None:
        """Drain every server in HAProxy, delete them once idle (or at the drain
        timeout), cancel every replica job, wait until none is left in the queue, stop
        HAProxy. Works for a controller that never ran a step (``serve stop`` of a
        service whose controller is gone)."""
        deadline = self.clock.monotonic() + (timeout_s if timeout_s is not None
                                             else self.spec.drain_timeout_s + 60)
        backend = self.spec.backend
        servers: dict[str, haproxy.ServerState] = {}
        with contextlib.suppress(RouterError):
            servers = self.admin.servers_state(backend)
        for name, server in servers.items():
            if not server.maintenance:
                with contextlib.suppress(RouterError):
                    self.admin.set_state(backend, name, "drain")
        drain_until = min(deadline, self.clock.monotonic() + self.spec.drain_timeout_s)
        while servers and self.clock.monotonic() < drain_until:
            try:
                stat = self.admin.stat(backend)
            except RouterError:
                break
            if all(s.current == 0 and s.queued == 0 for s in stat.servers.values()):
                break
            self.clock.sleep(0.2)
        for name in servers:
            with contextlib.suppress(RouterError):
                self.admin.set_state(backend, name, "maint")
                self.admin.shutdown_sessions(backend, name)
                self.admin.delete_server(backend, name)
        job_ids = set(self.replicas)
        with contextlib.suppress(SlurmkitError):
            job_ids |= {job.job_id for job in self.replica_jobs()}
        left = sorted(job_ids)
        if job_ids:
            with contextlib.suppress(SlurmCommandError):
                self.client.cancel(sorted(job_ids))
            while self.clock.monotonic() < deadline:
                try:
                    left = sorted(job.job_id for job in self.replica_jobs()
                                  if job.state != "COMPLETING")
                except SlurmkitError:
                    pass
                if not left:
                    break
                self.clock.sleep(0.5)
        haproxy.stop(self.paths)
        self.replicas.clear()
        self.event("stopped", cancelled=sorted(job_ids), left=left)
        if left:
            raise ServiceFailed(f"service {self.spec.name}: jobs {left} were cancelled but "
                                "are still in the queue; check them with squeue")

    def run(self, *, stop_requested: Callable[[], bool] | None = None,
            max_steps: int | None = None) -> None:
        """Start (or adopt) HAProxy and the replicas, then loop until ``stop_requested``
        or a stop in control.json; then stop the service. Errors that end the
        service stop it first (nothing is left running), then propagate."""
        self.state.ensure()
        haproxy.start(self.spec, self.paths)
        collector = LogCollector(self.paths.log_socket, self.clock.monotonic)
        collector.start()
        self.latencies = collector.snapshot
        steps = 0
        try:
            self.adopt()
            self.event("controller-started", pid=os.getpid(),
                       listen_port=self.spec.router.listen_port)
            while True:
                if (stop_requested and stop_requested()) or read_control(self.state).get("stop"):
                    break
                if max_steps is not None and steps >= max_steps:
                    return
                began = self.clock.monotonic()
                try:
                    self.step()
                except (SlurmCommandError, CommandTimeoutError, RouterError) as error:
                    # A query failed (slurmctld restarting, HAProxy's socket busy): the
                    # next pass tries again; the service keeps running as it is.
                    self.say(f"serve {self.spec.name}: pass failed, retrying: {error}")
                steps += 1
                left = self.spec.scaling.interval_s - (self.clock.monotonic() - began)
                if left > 0:
                    self.clock.sleep(left)
        except BaseException:
            with contextlib.suppress(BaseException):
                self.stop_service()
            raise
        finally:
            collector.close()
        self.stop_service()
        control = read_control(self.state)
        control.pop("stop", None)
        write_json(self.state.control, control)
