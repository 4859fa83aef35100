"""The in-allocation restart loop: runs in the batch step of a ``--no-kill`` job.

Each *attempt* is one ``srun`` step on the active nodes. The ranks keep a heartbeat
with this supervisor (``slurmkit.launch.heartbeat``); when one is lost, the
supervisor

1. asks the survivors for the triggered checkpoint of the last completed step and
   waits until they have written it (each says goodbye with the step it saved);
2. cancels the broken step and checks which of the lost ranks' nodes are still alive
   (a TCP connect to their slurmd: a crashed or cut-off node does not answer; a node
   whose rank merely crashed does);
3. starts the next step at once on the survivors — with a spare in place of each
   dead node where the job holds spares — using ``srun --overlap --exclude``-style
   explicit node lists: ``--overlap`` because Slurm still counts the dead step's
   resources until it declares the node DOWN, minutes later at its default
   ``SlurmdTimeout``.

It falls back to Slurm's requeue (exit 85, which the job script turns into
``scontrol requeue``) when fewer than the minimum nodes are left, when the restarted
step fails again before completing a step, after ``max_restarts``, or when the job
is being stopped (preemption, time limit, scancel: those nodes are not ours to keep).

Every attempt and restart is an event in ``events.jsonl`` of the checkpoint directory
(for ``slurmkit goodput``): ``attempt-start``, ``peer-lost``, ``restart``,
``restart-fallback``.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmkit.ckpt import store
from slurmkit.ckpt.manager import EXIT_REQUEUE
from slurmkit.errors import SlurmkitError
from slurmkit.launch import heartbeat
from slurmkit.launch.plan import Layout, RestartBudget, after_failure, initial_layout

SLURMD_PORT = heartbeat.SLURMD_PORT
#: After the first lost rank, wait this long for the others of the same fault (the
#: second rank of a crashed node) before acting on it.
SETTLE_S = 0.3


@dataclass
class LaunchConfig:
    command: list[str]
    ckpt_dir: Path
    nodes_min: int = 1
    nodes_max: int | None = None
    spares: int = 0
    ntasks_per_node: int = 1
    launcher: str = "srun"  # srun | torchrun
    nproc_per_node: int = 1
    master_port: int = 29500
    log_prefix: str | None = None
    slurmd_port: int = SLURMD_PORT
    probe_timeout_s: float = 0.25  # a live node's kernel answers a SYN in microseconds
    checkpoint_timeout_s: float = 60.0
    start_timeout_s: float = 300.0
    restart_window_s: float = 60.0
    max_restarts: int = 16
    launch_retries: int = 5  # a restarted step that fails to start: retried 2, 4, ... 32 s
    interval_s: float = heartbeat.DEFAULT_INTERVAL_S
    timeout_s: float = heartbeat.DEFAULT_TIMEOUT_S
    srun_args: list[str] = field(default_factory=list)

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node if self.launcher == "torchrun" else self.ntasks_per_node


@dataclass
class AttemptResult:
    outcome: str  # "exited" | "lost"
    returncode: int | None
    lost: list[heartbeat.Peer] = field(default_factory=list)
    progressed: bool = False


class Supervisor:
    def __init__(self, config: LaunchConfig, environ: Mapping[str, str] | None = None, *,
                 leaf_of: Callable[[str], str | None] | None = None,
                 alive: Callable[[str], bool] | None = None,
                 log: Callable[[str], None] | None = None):
        from slurmkit.slurm import hostlist

        self.config = config
        self.env = dict(os.environ if environ is None else environ)
        self.job_id = self.env.get("SLURM_JOB_ID", "0")
        self.run = int(self.env.get("SLURM_RESTART_COUNT") or 0)
        self.batch_host = self.env.get("SLURMD_NODENAME") or socket.gethostname()
        self.allocation = hostlist.expand(self.env.get("SLURM_JOB_NODELIST", self.batch_host))
        self.leaf_of = leaf_of or _topology_leaf_of()
        self.alive = alive or (lambda host: host == self.batch_host or heartbeat.node_answers(
            host, config.slurmd_port, config.probe_timeout_s))
        self._log = log or (lambda text: print(f"slurmkit.launch: {text}", flush=True))
        self.budget = RestartBudget(window_s=config.restart_window_s,
                                    max_restarts=config.max_restarts)
        self.stopping: str | None = None
        self.monitor: heartbeat.Monitor | None = None
        self.process: subprocess.Popen | None = None
        self._pending_restart: dict[str, Any] | None = None
        self._attempt_epoch_s = time.time()
        self._saved_step: int | None = None
        self._attempt = 0
        self._srun_stderr: collections.deque[str] = collections.deque(maxlen=20)

    # ------------------------------------------------------------------ public

    def run_job(self) -> int:
        config = self.config
        layout = initial_layout(self.allocation, self.batch_host, spares=config.spares,
                                nodes_min=config.nodes_min, nodes_max=config.nodes_max,
                                leaf_of=self.leaf_of)
        if len(layout.active) < config.nodes_min:
            self._log(f"only {len(layout.active)} node(s), the job needs {config.nodes_min}")
            return 1
        self.monitor = heartbeat.Monitor(interval_s=config.interval_s,
                                         timeout_s=config.timeout_s)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCONT, signal.SIGUSR2):
            signal.signal(number, self._on_signal)
        attempt = 0
        launch_failures = 0
        try:
            while True:
                result = self._run_attempt(attempt, layout)
                if result.outcome == "launch-failed":
                    # The restarted step did not start (srun refused or failed before
                    # any rank said hello: slurmctld restarting, step creation refused
                    # for a while): try again, then fall back to a requeue.
                    launch_failures += 1
                    if launch_failures > config.launch_retries or self.stopping:
                        reason = (f"the restarted step could not be started "
                                  f"{launch_failures} time(s): {self._srun_error()}")
                        self._log(f"falling back to a requeue: {reason}")
                        self._event("restart-fallback", attempt=attempt, reason=reason,
                                    dead_nodes=[], checkpoint_step=self._saved_step)
                        self._finish_pending(resumed=False)
                        return EXIT_REQUEUE
                    wait_s = min(30.0, 2.0 ** launch_failures)
                    self._log(f"attempt {attempt}: the step did not start "
                              f"({self._srun_error()}); trying again in {wait_s:g} s")
                    self._event("launch-failed", attempt=attempt, error=self._srun_error(),
                                retry_in_s=wait_s)
                    time.sleep(wait_s)
                    attempt += 1
                    continue
                launch_failures = 0
                if result.outcome == "exited":
                    self._finish_pending(resumed=False)
                    return result.returncode if result.returncode is not None else 1
                next_layout = self._recover(attempt, layout, result)
                if next_layout is None:
                    return EXIT_REQUEUE
                layout, attempt = next_layout, attempt + 1
        finally:
            self.monitor.close()

    # ---------------------------------------------------------------- attempts

    def _on_signal(self, number, _frame) -> None:
        if number != signal.SIGCONT:
            self.stopping = self.stopping or signal.Signals(number).name

    def _step_env(self, attempt: int, layout: Layout) -> dict[str, str]:
        env = dict(self.env)
        env.update({
            "SLURMKIT_SUPERVISOR": f"{self.batch_host}:{self.monitor.port}",
            "SLURMKIT_ATTEMPT": str(attempt),
            "SLURMKIT_HEARTBEAT_S": f"{self.config.interval_s:g}",
            "SLURMKIT_PEER_TIMEOUT_S": f"{self.config.timeout_s:g}",
            "SLURMKIT_SLURMD_PORT": str(self.config.slurmd_port),
            "SLURMKIT_CKPT_DIR": str(self.config.ckpt_dir),
            "MASTER_ADDR": layout.active[0],
            # A fresh rendezvous port per run and attempt: ranks of a broken step may
            # still hold the previous one.
            "MASTER_PORT": str(self.config.master_port + (self.run * 37 + attempt) % 1000),
        })
        return env

    def step_argv(self, attempt: int, layout: Layout) -> list[str]:
        from slurmkit.slurm import hostlist

        config = self.config
        nodes = len(layout.active)
        per_node = 1 if config.launcher == "torchrun" else config.ntasks_per_node
        argv = ["srun", "--overlap", "--kill-on-bad-exit=0", f"--nodes={nodes}",
                f"--ntasks={nodes * per_node}", f"--ntasks-per-node={per_node}",
                f"--nodelist={hostlist.compress(layout.active)}"]
        if config.log_prefix:
            argv.append(f"--output={config.log_prefix}.{attempt}-%t.log")
        argv += config.srun_args
        if config.launcher == "torchrun":
            port = self._step_env(attempt, layout)["MASTER_PORT"]
            argv += ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={config.nproc_per_node}",
                     f"--rdzv-id={self.job_id}-{self.run}-{attempt}", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint={layout.active[0]}:{port}"]
        return argv + list(config.command)

    def _run_attempt(self, attempt: int, layout: Layout) -> AttemptResult:
        config, monitor = self.config, self.monitor
        self._attempt = attempt
        monitor.start_attempt(attempt)
        _touch(store_attempt_marker(config.ckpt_dir, self.run, attempt))
        self._event("attempt-start", attempt=attempt, nodes=list(layout.active),
                    spares=list(layout.spares), ranks=len(layout.active) * config.ranks_per_node)
        argv = self.step_argv(attempt, layout)
        self._log(f"attempt {attempt}: {' '.join(argv)}")
        started = time.monotonic()
        self._attempt_epoch_s = time.time()
        self.process = subprocess.Popen(argv, env=self._step_env(attempt, layout),
                                        stderr=subprocess.PIPE)
        self._srun_stderr = collections.deque(maxlen=20)
        threading.Thread(target=_forward, args=(self.process.stderr, self._srun_stderr),
                         name="srun-stderr", daemon=True).start()
        expected = len(layout.active) * config.ranks_per_node
        first_lost_at: float | None = None
        progressed = False
        while True:
            monitor.poll(0.05)
            now = time.monotonic()
            returncode = self.process.poll()
            if not progressed and any(peer.progressed for peer in monitor.peers):
                progressed = True
                self._finish_pending(resumed=True)
            lost = monitor.lost()
            if not lost and returncode is None and now - started > config.start_timeout_s:
                connected = monitor.by_rank()
                if connected and len(connected) < expected:
                    missing = [rank for rank in range(expected) if rank not in connected]
                    lost = self._never_connected(missing, layout)
            if lost:
                first_lost_at = first_lost_at or now
                if now - first_lost_at >= SETTLE_S or returncode is not None:
                    return AttemptResult("lost", returncode, list(lost), progressed)
            elif returncode is not None:
                # The tasks' last words may still be in flight: read them before
                # deciding that nothing was lost.
                deadline = time.monotonic() + 0.2
                while time.monotonic() < deadline and not monitor.lost():
                    monitor.poll(0.02)
                if monitor.lost():
                    continue
                connected = monitor.by_rank()
                if returncode and not connected and attempt > 0:
                    # A restart whose step never ran: no rank of it said hello (in the
                    # first attempt they did, so this program keeps a heartbeat).
                    return AttemptResult("launch-failed", returncode)
                if returncode and connected and len(connected) < expected:
                    # Ranks that died while starting, before their hello.
                    return AttemptResult("lost", returncode, self._never_connected(
                        [rank for rank in range(expected) if rank not in connected], layout),
                        progressed)
                if returncode:
                    self._log(f"attempt {attempt}: srun exited with {returncode} and no rank "
                              "was lost; goodbyes: " + (", ".join(
                                  f"rank {p.rank} {p.bye.get('why')}" for p in monitor.peers
                                  if p.bye) or "none"))
                return AttemptResult("exited", returncode)

    def _srun_error(self) -> str:
        lines = [line for line in self._srun_stderr if "error" in line.lower()]
        return (lines or list(self._srun_stderr) or ["no output"])[-1]

    def _never_connected(self, ranks: list[int], layout: Layout) -> list[heartbeat.Peer]:
        per_node = self.config.ranks_per_node
        peers = []
        for rank in ranks:
            host = layout.active[min(rank // per_node, len(layout.active) - 1)]
            peer = heartbeat.Peer(connection=socket.socket(), rank=rank, host=host,
                                  lost="never connected")
            peer.connection.close()
            peers.append(peer)
        self.monitor.peers.extend(peers)
        return peers

    # ---------------------------------------------------------------- recovery

    def _recover(self, attempt: int, layout: Layout, result: AttemptResult) -> Layout | None:
        config = self.config
        detected_epoch_s = time.time()
        lost = result.lost
        lost_hosts = sorted({peer.host for peer in lost if peer.host})
        fault_epoch_s = min(peer.last_heard_epoch_s for peer in lost)
        reason = (f"rank(s) {', '.join(str(p.rank) for p in sorted(lost, key=_rank))} lost "
                  f"on {', '.join(lost_hosts)}: {lost[0].lost}")
        self._log(f"attempt {attempt}: {reason}")
        self._event("peer-lost", attempt=attempt, lost_ranks=sorted(p.rank for p in lost),
                    hosts=lost_hosts, why=[p.lost for p in lost], fault_epoch_s=fault_epoch_s,
                    detected_epoch_s=detected_epoch_s)
        # Probe the lost ranks' nodes while the survivors write the checkpoint.
        with ThreadPoolExecutor(max_workers=min(32, max(1, len(lost_hosts)))) as pool:
            answers = pool.map(self.alive, lost_hosts)
            saved_step = self._collect_checkpoint(reason)
            if saved_step is not None:
                self._saved_step = saved_step
            checkpoint_epoch_s = time.time()
            dead = [host for host, up in zip(lost_hosts, list(answers), strict=True) if not up]
        self._cancel_step()
        self._finish_pending(resumed=False)
        fallback = None
        if self.stopping:
            fallback = f"the job is being stopped ({self.stopping})"
        plan = after_failure(layout, dead, self.batch_host, nodes_min=config.nodes_min,
                             leaf_of=self.leaf_of, order=self.allocation)
        if fallback is None and not plan.in_place:
            fallback = plan.reason
        if fallback is None:
            allowed, why = self.budget.allows(
                attempt_age_s=time.time() - self._attempt_epoch_s,
                made_progress=result.progressed, first_attempt=attempt == 0)
            fallback = None if allowed else why
        if fallback is not None:
            self._log(f"falling back to a requeue: {fallback}")
            self._event("restart-fallback", attempt=attempt, dead_nodes=dead, reason=fallback,
                        checkpoint_step=saved_step)
            return None
        self.budget.restarts += 1
        self._pending_restart = {
            "attempt": attempt + 1, "dead_nodes": dead,
            "lost_ranks": sorted(peer.rank for peer in lost),
            "spare_used": plan.spares_used[0] if plan.spares_used else None,
            "spares_used": list(plan.spares_used), "nodes": list(plan.layout.active),
            "ranks": len(plan.layout.active) * config.ranks_per_node,
            "checkpoint_step": saved_step, "fault_epoch_s": round(fault_epoch_s, 3),
            "detected_epoch_s": round(detected_epoch_s, 3),
            "checkpoint_epoch_s": round(checkpoint_epoch_s, 3),
            "launched_epoch_s": round(time.time(), 3)}
        self._log(f"restarting in place on {', '.join(plan.layout.active)}"
                  + (f" (spare {', '.join(plan.spares_used)})" if plan.spares_used else "")
                  + f" from step {saved_step}")
        return plan.layout

    def _collect_checkpoint(self, reason: str) -> int | None:
        """Ask the survivors for the triggered checkpoint; wait until each has said
        goodbye (it exits once the checkpoint is committed, by itself or a peer) or is
        gone. The step saved, as the survivors report it."""
        monitor = self.monitor
        asked = set(monitor.request_checkpoint(f"peer lost: {reason}"))
        deadline = time.monotonic() + self.config.checkpoint_timeout_s
        while time.monotonic() < deadline:
            waiting = [peer for peer in monitor.peers
                       if peer.rank in asked and peer.bye is None and not peer.lost]
            if not waiting:
                break
            monitor.poll(0.02)
        saved = [peer.bye.get("step") for peer in monitor.peers
                 if peer.bye and peer.bye.get("saved") and isinstance(peer.bye.get("step"), int)]
        return max(saved) if saved else None

    def _cancel_step(self) -> None:
        """End the broken step: srun would wait for the dead node's tasks for minutes
        (until Slurm declares the node DOWN); the survivors have exited. ``scancel``
        of the step tidies up in the background: the next step does not wait for it."""
        step_ids = sorted({peer.step_id for peer in self.monitor.peers if peer.step_id})
        if step_ids:
            subprocess.Popen(["scancel", "--quiet", *(f"{self.job_id}.{step_id}"
                                                      for step_id in step_ids)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _finish_pending(self, *, resumed: bool) -> None:
        if not self._pending_restart:
            return
        record = dict(self._pending_restart)
        record["attempt"] = self._attempt  # the one that ran (after any launch retries)
        if resumed:
            record["resumed_epoch_s"] = round(time.time(), 3)
        self._pending_restart = None
        self._event("restart", **record)

    # ---------------------------------------------------------------- records

    def _event(self, name: str, **fields) -> None:
        try:
            store.append_event(self.config.ckpt_dir, {
                "event": name, "run": self.run, "job_id": self.job_id, "rank": "supervisor",
                "host": self.batch_host, **fields})
        except OSError as error:
            self._log(f"cannot append event {name}: {error}")


def store_attempt_marker(directory: Path, run: int, attempt: int) -> Path:
    """``runs/attempt-RUN-ATTEMPT``: fences off the ranks of earlier attempts."""
    return Path(directory) / "runs" / f"attempt-{run:06d}-{attempt:04d}"


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _rank(peer: heartbeat.Peer) -> int:
    return peer.rank if peer.rank is not None else -1


def _topology_leaf_of() -> Callable[[str], str | None]:
    """Leaf switch of each node from ``scontrol show topology``; none when Slurm has
    no topology (then spares are taken in allocation order)."""
    from slurmkit.topology.model import parse_topology

    try:
        result = subprocess.run(["scontrol", "show", "topology"], capture_output=True,
                                text=True, timeout=30, check=False)
        topology = parse_topology(result.stdout) if result.returncode == 0 \
            and result.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, SlurmkitError):
        topology = None
    if topology is None:
        return lambda _node: None
    return topology.leaf_of.get


def _forward(stream, tail: collections.deque) -> None:
    """srun's stderr to ours, line by line, keeping the last lines (its error)."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        tail.append(line.rstrip())
        sys.stderr.write(line)
        sys.stderr.flush()
    stream.close()
