"""Running the example trainer on the docker-slurm cluster: submit it with
``slurmkit submit``, follow its events, wait for it, compare its result. Shared by
the cluster tests, the demo and the fault campaign."""

from __future__ import annotations

import json
from dataclasses import dataclass

from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.models import AccountingRecord
from slurmkit.testing.cluster import COMPUTE_NODES, Cluster, ContainerRunner, wait_until

SPEC = "/opt/slurmkit/examples/specs/train.toml"
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE")


def reference_sha(cluster: Cluster, steps: int, extra: tuple[str, ...] = ()) -> str:
    """The fault-free result: one process, same image (same NumPy and BLAS)."""
    directory = f"/tmp/reference-ckpt-{steps}"
    cluster.exec("login", ["rm", "-rf", directory], user="alice")
    result = cluster.exec("login", [
        "env", f"SLURMKIT_CKPT_DIR={directory}", "python3", "-m", "examples.trainer",
        "--steps", str(steps), "--step-seconds", "0", "--periodic-steps", "0", *extra],
        user="alice", timeout_s=600)
    return result.stdout.split("weights_sha256 ")[1].split()[0]


@dataclass
class Training:
    """One training job: its id, checkpoint directory and logs."""

    cluster: Cluster
    name: str
    job_id: int
    steps: int
    submit_output: dict
    user: str = "alice"

    @property
    def ckpt_dir(self) -> str:
        return f"/shared/ckpt/{self.name}"

    @property
    def log_dir(self) -> str:
        return f"/shared/logs/{self.name}"

    @classmethod
    def submit(cls, cluster: Cluster, name: str, steps: int, *, trainer_args: tuple[str, ...] = (),
               submit_args: tuple[str, ...] = (), user: str = "alice") -> Training:
        for directory in (f"/shared/ckpt/{name}", f"/shared/logs/{name}"):
            cluster.exec("login", ["rm", "-rf", directory])
        result = cluster.exec("login", [
            "slurmkit", "submit", SPEC, "-J", name, "--checkpoint-dir", f"/shared/ckpt/{name}",
            "--log-dir", f"/shared/logs/{name}", "--health-since", "off", "--json",
            *submit_args, "--", "python3", "-m", "examples.trainer", "--steps", str(steps),
            *trainer_args], user=user)
        output = json.loads(result.stdout)
        return cls(cluster, name, output["job_id"], steps, output, user)

    @property
    def client(self) -> SlurmClient:
        return SlurmClient(ContainerRunner(self.cluster, "login", self.user))

    def events(self) -> list[dict]:
        text = self.cluster.exec("login", ["cat", f"{self.ckpt_dir}/events.jsonl"],
                                 check=False).stdout
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def log(self, run: int, rank: int = 0) -> str:
        return self.cluster.exec("login", [
            "cat", f"{self.log_dir}/{self.name}-{self.job_id}-run{run}-{rank}.log"],
            check=False).stdout

    def logs(self, run: int) -> str:
        return self.cluster.exec("login", ["bash", "-c",
                                           f"cat {self.log_dir}/*-{self.job_id}-run{run}-*.log"],
                                 check=False).stdout

    def last_step(self, run: int | None = None) -> int:
        return max((e["step"] for e in self.events()
                    if e["event"] == "step" and (run is None or e["run"] == run)), default=0)

    def wait_step(self, step: int, timeout_s: float = 300) -> None:
        wait_until(f"{self.name} to reach step {step}",
                   lambda: self.last_step() >= step, timeout_s=timeout_s, interval_s=0.3)

    def job(self):
        jobs = self.client.jobs(job_ids=[self.job_id])
        return jobs[0] if jobs else None

    def runs(self) -> list[AccountingRecord]:
        return sorted(self.client.accounting(job_ids=[self.job_id], since="now-2days"),
                      key=lambda record: record.restarts)

    def wait_finished(self, timeout_s: float = 600) -> list[AccountingRecord]:
        def finished():
            job = self.job()
            if job is not None and job.state not in FINISHED:
                return None
            runs = self.runs()
            return runs if runs and runs[-1].state in FINISHED and runs[-1].end_epoch_s else None
        return wait_until(f"{self.name} (job {self.job_id}) to finish", finished,
                          timeout_s=timeout_s, interval_s=1.0,
                          on_timeout=lambda: str([(r.restarts, r.state) for r in self.runs()]))

    def final_sha(self) -> str | None:
        runs = self.runs()
        for run in reversed(range(runs[-1].restarts + 1)):
            for line in self.logs(run).splitlines():
                if " done step " in line and "weights_sha256 " in line:
                    return line.split("weights_sha256 ")[1].split()[0]
        return None

    def cancel(self) -> None:
        self.cluster.exec("ctl", ["scancel", str(self.job_id)], check=False)


# The trainer processes themselves: on the batch host, srun's own command line holds
# "python3 -m examples.trainer" too, and killing srun is not a rank crash.
TRAINER_PROCESS = "^[^ ]*python3 -m examples[.]trainer"


def trainer_pids(cluster: Cluster, node: str, user: str = "alice") -> list[str]:
    """PIDs of the example trainer's ranks on ``node``."""
    return cluster.exec(node, ["pgrep", "-u", user, "-f", TRAINER_PROCESS],
                        check=False).stdout.split()


def survivors_save(events: list[dict], run: int = 0) -> tuple[int, str] | None:
    """The step the survivors of ``run`` saved when triggered, and how it was kept:
    ``"triggered"`` when they wrote it; ``"periodic"`` when a periodic checkpoint had
    already committed that very step (the survivors then record ``checkpoint-exists``
    and write nothing: a fault right after a periodic checkpoint). None: not yet."""
    in_run = [event for event in events if event.get("run") == run]
    for event in in_run:
        if event["event"] == "checkpoint" and event.get("kind") == "triggered" \
                and event.get("committed"):
            return event["step"], "triggered"
    # "checkpoint-exists" alone is not enough: a survivor may find the step that
    # another survivor has just committed, before that one has logged its commit.
    periodic_steps = {event["step"] for event in in_run if event["event"] == "checkpoint"
                      and event.get("kind") == "periodic" and event.get("committed")}
    for event in in_run:
        if event["event"] == "checkpoint-exists" and event["step"] in periodic_steps:
            return event["step"], "periodic"
    return None


def no_trainer_left(cluster: Cluster) -> bool:
    return all(cluster.exec(node, ["pgrep", "-f", TRAINER_PROCESS], check=False).returncode
               for node in COMPUTE_NODES if cluster.health(node) == "healthy")
