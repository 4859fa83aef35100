"""`slurmkit serve` on the docker-slurm cluster: a service's spec and controller on the
login node, an open-loop load from the login node, the example trainer as borrowed
training. Shared by tests/cluster/test_serve.py, tests/cluster/test_serve_faults.py
and bench/tidal.py."""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass, field

from slurmkit.testing.cluster import Cluster, json_lines, wait_until
from slurmkit.testing.training import Training

#: The example model server: 100 ms a request, two at a time (20 requests/s a replica).
SERVER = ("python3", "-m", "examples.serve_model", "--port", "{port}", "--cost-ms", "100",
          "--slots", "2", "--load-s", "1")
REPLICA_CAPACITY_RPS = 20.0


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def spec_toml(top: dict, router: dict, scaling: dict) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    lines.append("[router]")
    lines += [f"{key} = {toml_value(value)}" for key, value in router.items()]
    lines.append("[scaling]")
    lines += [f"{key} = {toml_value(value)}" for key, value in scaling.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Service:
    """One service of `slurmkit serve`, its spec and state in ``user``'s home on the
    login node (shared with the compute nodes: the replicas' output goes there too)."""

    cluster: Cluster
    name: str
    user: str = "alice"
    replicas: str = "1-3"
    listen_port: int = 18080
    port: int = 8100
    account: str = "team-a"
    qos: str = "inference"
    server: tuple[str, ...] = SERVER
    top: dict = field(default_factory=dict)
    router: dict = field(default_factory=dict)
    scaling: dict = field(default_factory=dict)

    @property
    def home(self) -> str:
        return f"/home/{self.user}"

    @property
    def state_dir(self) -> str:
        return f"{self.home}/serve-{self.name}"

    @property
    def spec_path(self) -> str:
        return f"{self.home}/serve-{self.name}.toml"

    @property
    def log_path(self) -> str:
        return f"{self.home}/serve-{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}/v1/predict"

    def toml(self) -> str:
        top = {"name": self.name, "command": list(self.server), "port": self.port,
               "replicas": self.replicas, "gpus_per_replica": 8, "account": self.account,
               "qos": self.qos, "latency_target_ms": 500, "state_dir": self.state_dir,
               "ready_timeout_s": 60, "max_start_failures": 3, "drain_timeout_s": 20,
               **self.top}
        router = {"listen_port": self.listen_port, "slots_per_replica": 2,
                  "health_interval_ms": 1000, "health_fall": 2, "request_timeout_s": 2,
                  "queue_timeout_s": 60, **self.router}
        scaling = {"signal": "rate", "target_per_replica": 10, "window_s": 10,
                   "interval_s": 1, "down_stable_s": 8, "down_cooldown_s": 10, **self.scaling}
        return spec_toml(top, router, scaling)

    def exec(self, argv, **options):
        return self.cluster.exec("login", argv, user=self.user, **options)

    def write(self) -> None:
        self.exec(["rm", "-rf", self.state_dir, self.log_path])
        self.exec(["tee", self.spec_path], input_text=self.toml())

    def start(self) -> None:
        """The controller in the background (it outlives this docker exec)."""
        self.exec(["bash", "-c", f"setsid -f slurmkit serve {shlex.quote(self.spec_path)} "
                   f">> {shlex.quote(self.log_path)} 2>&1 < /dev/null"])

    def run_foreground(self, timeout_s: float):
        """``slurmkit serve SPEC`` until it exits (the bad-input cases)."""
        return self.exec(["timeout", "-s", "INT", str(int(timeout_s)), "slurmkit", "serve",
                          self.spec_path], check=False, timeout_s=timeout_s + 60)

    def stop(self, timeout_s: float = 180):
        return self.exec(["slurmkit", "serve", "stop", self.spec_path], check=False,
                         timeout_s=timeout_s)

    def status(self) -> dict:
        text = self.exec(["cat", f"{self.state_dir}/status.json"], check=False).stdout
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def events(self, name: str | None = None) -> list[dict]:
        events = json_lines(self.exec(["cat", f"{self.state_dir}/events.jsonl"],
                                      check=False).stdout)
        return [e for e in events if name is None or e.get("event") == name]

    def log(self) -> str:
        return self.exec(["tail", "-n", "40", self.log_path], check=False).stdout

    def replicas_in(self, *states: str) -> list[dict]:
        return [r for r in self.status().get("replicas", []) if r.get("state") in states]

    def wait_serving(self, count: int, timeout_s: float = 120, exact: bool = True) -> list[dict]:
        def serving():
            ready = self.replicas_in("ready")
            ok = len(ready) == count if exact else len(ready) >= count
            return ready if ok and (not exact or len(self.status().get("replicas", [])) == count) \
                else None
        return wait_until(f"{self.name} to serve with {count} replica(s)", serving,
                          timeout_s=timeout_s, interval_s=0.5,
                          on_timeout=lambda: f"status {self.status()}; log: {self.log()}")

    def controller_pid(self) -> int | None:
        pid = self.status().get("controller_pid")
        return pid if isinstance(pid, int) else None

    def controller_running(self) -> bool:
        pid = self.controller_pid()
        return bool(pid) and self.exec(["kill", "-0", str(pid)], check=False).returncode == 0

    def kill_controller(self) -> None:
        """SIGKILL: the controller cleans nothing up."""
        pid = self.controller_pid()
        self.exec(["kill", "-9", str(pid)])
        wait_until("the controller to be gone", lambda: not self.controller_running(),
                   timeout_s=30)

    def queued_jobs(self) -> list[dict]:
        """This service's replica jobs still pending or running in Slurm's queue (not
        those COMPLETING: cancelled, their processes being cleaned up)."""
        text = self.cluster.exec("ctl", ["squeue", "--json", f"--name=serve-{self.name}"]).stdout
        return [job for job in json.loads(text).get("jobs", [])
                if str(job.get("comment", "")).startswith("slurmkit-serve")
                and not set(job.get("job_state", [])) & {"COMPLETING", "CANCELLED",
                                                         "COMPLETED", "FAILED"}]

    def port_free(self) -> bool:
        """True when nothing listens on the router's port on the login node."""
        result = self.cluster.exec("login", ["python3", "-c", (
            "import socket,sys\ns=socket.socket()\n"
            f"sys.exit(0 if s.connect_ex(('127.0.0.1', {self.listen_port})) else 1)")],
            check=False)
        return result.returncode == 0


class Load:
    """The open-loop load generator on the login node, in a thread of the caller."""

    def __init__(self, cluster: Cluster, url: str, profile: str, *, slo_ms: float = 500,
                 timeout_s: float = 70, out_path: str | None = None, user: str = "alice"):
        self.cluster, self.url, self.profile = cluster, url, profile
        self.slo_ms, self.timeout_s, self.out_path, self.user = slo_ms, timeout_s, out_path, user
        self.summary: dict | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started_epoch_s: float | None = None

    @property
    def duration_s(self) -> float:
        return sum(float(part.split(":")[1]) for part in self.profile.split(","))

    def _run(self) -> None:
        argv = ["python3", "-m", "slurmkit.serve.loadgen", "--url", self.url, "--profile",
                self.profile, "--slo-ms", str(self.slo_ms), "--timeout-s", str(self.timeout_s)]
        if self.out_path:
            argv += ["--out", self.out_path]
        result = self.cluster.exec("login", argv, user=self.user, check=False,
                                   timeout_s=self.duration_s + self.timeout_s + 120)
        try:
            self.summary = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.error = f"exit {result.returncode}: {result.stderr[-2000:]}"

    def start(self) -> Load:
        self.started_epoch_s = time.time()
        self.thread.start()
        return self

    def join(self) -> dict:
        self.thread.join()
        if self.summary is None:
            raise AssertionError(f"the load generator failed: {self.error}")
        return self.summary

    def records(self) -> list[dict]:
        if not self.out_path:
            return []
        text = self.cluster.exec("login", ["cat", self.out_path], check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def submit_trainer(cluster: Cluster, name: str, *, user: str = "bob", account: str = "team-b",
                   partition: str | None = None, steps: int = 100_000,
                   step_seconds: float = 0.25) -> Training:
    """A one-node run of the example trainer (two ranks, triggered checkpoints) that
    borrows capacity; requeued by Slurm when preempted. Not pinned to a node
    (``--placement none``): a preempted run must be free to come back anywhere."""
    args = ["-A", account, "-N", "1", "--restart", "requeue", "--placement", "none"]
    if partition:
        args += ["-p", partition]
    return Training.submit(cluster, name, steps, user=user, submit_args=tuple(args),
                           trainer_args=("--step-seconds", str(step_seconds)))
