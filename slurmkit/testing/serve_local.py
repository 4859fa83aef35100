"""`slurmkit serve` on one machine: the real controller, the real HAProxy and the
example model server, with a stand-in for Slurm that runs each replica job as a local
process (``LocalSlurm``). It checks the router's side of the acceptance without a
cluster: replicas added when ready, no failed request while replicas are drained and
removed under load, a killed replica (connections refused) and a hung one (no answer,
as behind a dead node) taken out by the health checks and replaced, their requests
retried, a restarted controller adopting what runs, nothing left after the stop.

    python3 -m slurmkit.testing.serve_local      # prints one JSON line; exit 1 on a failed check

Needs ``haproxy`` on PATH (the node image has it: the cluster test runs this on the
login node).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurmkit.errors import SlurmCommandError
from slurmkit.serve import loadgen
from slurmkit.serve import spec as spec_module
from slurmkit.serve.controller import Clock, Controller
from slurmkit.serve.state import StateDir, read_json
from slurmkit.slurm.client import SubmitResult
from slurmkit.slurm.models import Job

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LocalJob:
    job_id: int
    name: str
    comment: str
    argv: list[str]
    env: dict[str, str]
    output: str
    submit_epoch_s: int
    start_after: float
    process: subprocess.Popen | None = None
    start_epoch_s: int | None = None
    cancelled: bool = False


@dataclass
class LocalSlurm:
    """sbatch/squeue/scancel for replica jobs, as local processes on "localhost"."""

    user: str
    start_delay_s: float = 0.5
    jobs_by_id: dict[int, LocalJob] = field(default_factory=dict)
    next_id: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, script: str, args=()) -> SubmitResult:
        args = list(args)
        comment = args[args.index("--comment") + 1]
        output = next(a.split("=", 1)[1] for a in args if a.startswith("--output="))
        env, argv, name = {}, [], "job"
        for line in script.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                if "$" not in value:
                    env[key] = shlex.split(value)[0] if value else ""
            elif line.startswith("#SBATCH --job-name="):
                name = shlex.split(line.split("=", 1)[1])[0]
            elif line.startswith("srun "):
                words = shlex.split(line)[1:]
                while words and words[0].startswith("-"):
                    words.pop(0)
                argv = words
        if not argv:
            raise SlurmCommandError(["sbatch"], 1, "no srun line in the script")
        with self.lock:
            job_id, self.next_id = self.next_id, self.next_id + 1
            self.jobs_by_id[job_id] = LocalJob(job_id, name, comment, argv, env,
                                               output.replace("%j", str(job_id)),
                                               int(time.time()),
                                               time.monotonic() + self.start_delay_s)
        return SubmitResult(job_id, None, f"{job_id}\n", "")

    def _advance(self) -> None:
        for job in list(self.jobs_by_id.values()):
            if job.process is None and not job.cancelled and time.monotonic() >= job.start_after:
                out = open(job.output, "ab")
                job.process = subprocess.Popen(job.argv, cwd=REPO, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               env={**os.environ, **job.env},
                                               start_new_session=True)
                out.close()
                job.start_epoch_s = int(time.time())
            if job.process is not None and job.process.poll() is not None:
                del self.jobs_by_id[job.job_id]
            elif job.process is None and job.cancelled:
                del self.jobs_by_id[job.job_id]

    def jobs(self, *, users=(), states=(), job_ids=()) -> list[Job]:
        with self.lock:
            self._advance()
            jobs = []
            for job in self.jobs_by_id.values():
                state = "PENDING" if job.process is None else "RUNNING"
                if states and state not in states:
                    continue
                jobs.append(Job(
                    job_id=job.job_id, name=job.name, user=self.user, account="local",
                    partition="local", qos="inference", state=state, state_flags=(state,),
                    reason="", nodes=("localhost",) if job.process else (),
                    node_count=1, submit_epoch_s=job.submit_epoch_s, eligible_epoch_s=None,
                    start_epoch_s=job.start_epoch_s, end_epoch_s=None, time_limit_min=None,
                    restart_count=0, requeue=True, priority=1, comment=job.comment))
            return jobs

    def cancel(self, job_ids, **_) -> None:
        with self.lock:
            for job_id in job_ids:
                job = self.jobs_by_id.get(int(job_id))
                if job is None:
                    continue
                job.cancelled = True
                if job.process is not None and job.process.poll() is None:
                    job.process.send_signal(signal.SIGTERM)
                    job.process.send_signal(signal.SIGCONT)

    def kill(self, job_id: int) -> None:
        """The replica's process dies at once (SIGKILL): connections are refused."""
        with self.lock:
            self.jobs_by_id[job_id].process.kill()

    def freeze(self, job_id: int) -> None:
        """The replica's process stops (SIGSTOP), as behind a crashed node: connections
        hang instead of being refused. A cancel lets it go on (SIGCONT after SIGTERM)."""
        with self.lock:
            self.jobs_by_id[job_id].process.send_signal(signal.SIGSTOP)

    def processes_left(self) -> int:
        with self.lock:
            self._advance()
            return sum(1 for job in self.jobs_by_id.values()
                       if job.process is not None and job.process.poll() is None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, condition, timeout_s: float, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


class Harness:
    def __init__(self, root: Path):
        self.root = root
        self.router_port = free_port()
        base_port = free_port()
        self.spec = spec_module.build({
            "name": "local", "port": base_port, "replicas": "1-3",
            "command": [sys.executable, "-m", "examples.serve_model", "--port", "{port}",
                        "--bind", "127.0.0.1", "--cost-ms", "100", "--slots", "2",
                        "--load-s", "0.5"],
            "state_dir": str(root / "state"), "ready_timeout_s": 30, "drain_timeout_s": 20,
            "router": {"listen_port": self.router_port, "bind_address": "127.0.0.1",
                       "slots_per_replica": 2, "health_interval_ms": 500,
                       "request_timeout_s": 3},
            "scaling": {"target_per_replica": 8, "window_s": 3, "interval_s": 0.5,
                        "down_stable_s": 3, "down_cooldown_s": 3},
        })
        self.slurm = LocalSlurm(user="local")
        self.messages: list[str] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}/v1/predict"

    def start_controller(self) -> None:
        self.stop.clear()
        self.controller = Controller(spec=self.spec, client=self.slurm, user="local",
                                     resolve=lambda node: "127.0.0.1", clock=Clock(),
                                     say=self.messages.append)

        def run():
            try:
                self.controller.run(stop_requested=self.stop.is_set)
            except BaseException as error:  # reported by the scenario
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def crash_controller(self) -> None:
        """Stop the controller's loop without letting it clean up (as SIGKILL would)."""
        controller = self.controller
        controller.stop_service = lambda **_: None  # a killed process does nothing more
        self.stop.set()
        self.thread.join(timeout=30)

    def status(self) -> dict:
        return read_json(StateDir(Path(self.spec.state_dir)).status) or {}

    def serving(self) -> int:
        return sum(1 for r in self.status().get("replicas", []) if r["state"] == "ready")

    def events(self, name: str) -> list[dict]:
        from slurmkit.serve.state import read_events

        return [e for e in read_events(StateDir(Path(self.spec.state_dir)).events)
                if e["event"] == name]

    def load(self, phases) -> tuple[list, threading.Thread]:
        results: list = []
        thread = threading.Thread(target=lambda: results.extend(
            loadgen.run(self.url, phases, timeout_s=10)), daemon=True)
        thread.start()
        return results, thread


def scenario(root: Path) -> dict:
    h = Harness(root)
    checks: dict[str, bool] = {}
    out: dict = {"checks": checks}
    h.start_controller()
    try:
        wait_for("the first replica", lambda: h.serving() >= 1, 30)
        # A burst: 4/s, 30/s (needs 4 replicas at 8/s each: capped at MAX 3), 4/s.
        results, thread = h.load([loadgen.Phase("low", 4, 4, 4),
                                  loadgen.Phase("burst", 14, 30, 30),
                                  loadgen.Phase("after", 16, 4, 4)])
        wait_for("3 replicas serving during the burst", lambda: h.serving() == 3, 25)
        thread.join()
        summary = loadgen.summarize(results, slo_ms=1000)
        wait_for("the scale-down to 1", lambda: h.serving() == 1 and len(
            h.status().get("replicas", [])) == 1, 30)
        drained = h.events("replica-drained")
        out["burst"] = {"requests": summary["requests"], "failed": summary["failed"],
                        "p99_ms": summary["p99_ms"], "drained": len(drained),
                        "targets": [e["target"] for e in h.events("scale")]}
        checks["scaled_up_to_3_and_back"] = out["burst"]["targets"][-1] == 1 and \
            3 in out["burst"]["targets"]
        checks["drained_before_removal"] = len(drained) == 2
        checks["no_failed_request_while_scaling"] = summary["failed"] == 0

        # A replica dies under load: health checks take it out, the scaler replaces it.
        h.controller.spec = h.spec  # unchanged; the pin below keeps two replicas
        from slurmkit.serve.state import request
        request(StateDir(Path(h.spec.state_dir)), pinned=2)
        wait_for("2 replicas", lambda: h.serving() == 2, 30)
        results, thread = h.load([loadgen.Phase("steady", 12, 10, 10)])
        time.sleep(3)
        victim = max(r["job_id"] for r in h.status()["replicas"] if r["state"] == "ready")
        killed_at = time.monotonic()
        h.slurm.kill(victim)
        wait_for("a replacement serving", lambda: h.serving() == 2 and victim not in
                 [r["job_id"] for r in h.status()["replicas"]], 30)
        replaced_after_s = time.monotonic() - killed_at
        thread.join()
        summary = loadgen.summarize(results, slo_ms=1000)
        out["kill"] = {"requests": summary["requests"], "failed": summary["failed"],
                       "replaced_after_s": round(replaced_after_s, 2),
                       "lost_events": len(h.events("replica-lost"))}
        checks["killed_replica_replaced"] = out["kill"]["lost_events"] >= 1
        checks["failed_requests_bounded"] = summary["failed"] <= 5

        # A replica hangs (its node gone: no answer, no refusal): requests at it are
        # retried elsewhere after request_timeout_s, its health checks time out.
        wait_for("2 replicas", lambda: h.serving() == 2, 30)
        results, thread = h.load([loadgen.Phase("steady", 14, 10, 10)])
        time.sleep(3)
        victim = max(r["job_id"] for r in h.status()["replicas"] if r["state"] == "ready")
        frozen_at = time.monotonic()
        lost_before = len(h.events("replica-lost"))
        h.slurm.freeze(victim)
        wait_for("the hung replica replaced", lambda: h.serving() == 2 and victim not in
                 [r["job_id"] for r in h.status()["replicas"] if r["state"] == "ready"], 30)
        replaced_after_s = time.monotonic() - frozen_at
        thread.join()
        summary = loadgen.summarize(results, slo_ms=1000)
        out["hang"] = {"requests": summary["requests"], "failed": summary["failed"],
                       "p99_ms": summary["p99_ms"], "replaced_after_s": round(replaced_after_s, 2)}
        checks["hung_replica_replaced"] = len(h.events("replica-lost")) > lost_before
        checks["hung_replica_requests_retried"] = summary["failed"] <= 5

        # The controller dies; a new one adopts the replicas and HAProxy as they are.
        wait_for("the hung replica's job to end", lambda: len(h.status()["replicas"]) == 2, 30)
        before = sorted(r["job_id"] for r in h.status()["replicas"])
        h.crash_controller()
        submitted = len(h.events("replica-submitted"))
        results, thread = h.load([loadgen.Phase("steady", 6, 8, 8)])
        h.start_controller()
        wait_for("the new controller's status", lambda: h.status().get(
            "controller_pid") and h.events("adopted"), 20)
        time.sleep(3)
        thread.join()
        summary = loadgen.summarize(results, slo_ms=1000)
        after = sorted(r["job_id"] for r in h.status()["replicas"])
        out["restart"] = {"before": before, "after": after, "failed": summary["failed"],
                          "new_submissions": len(h.events("replica-submitted")) - submitted}
        checks["restart_adopts_without_resubmitting"] = before == after and \
            out["restart"]["new_submissions"] == 0 and summary["failed"] == 0
    finally:
        h.stop.set()
        if h.thread is not None:
            h.thread.join(timeout=60)
    left = h.slurm.processes_left()
    haproxy_pid = Path(h.spec.state_dir, "haproxy.pid")
    out["after_stop"] = {"replica_processes": left, "haproxy_pidfile": haproxy_pid.exists(),
                         "error": repr(h.error) if h.error else None}
    checks["stop_leaves_nothing"] = left == 0 and not haproxy_pid.exists() and h.error is None
    out["ok"] = all(checks.values())
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sk-serve-", dir="/tmp") as root:
        result = scenario(Path(root))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
