"""Running the example trainers on the docker-slurm cluster: submit them with
``slurmkit submit``, follow their events, wait for them, compare their results.
Shared by the cluster tests, the demo and the fault campaign. The NumPy trainer
(``examples.trainer``) by default; the PyTorch ones (``examples.torch_ddp``,
``examples.torch_fsdp``) with ``program=``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.models import AccountingRecord
from slurmkit.testing.cluster import (
    COMPUTE_NODES,
    Cluster,
    ContainerRunner,
    json_lines,
    wait_until,
)

SPEC = "/opt/slurmkit/examples/specs/train.toml"
TRAINER = ("python3", "-m", "examples.trainer")
#: The PyTorch examples, as the training template starts them: under torchrun (one
#: srun task per node, torchrun's 2 workers) or as plain srun tasks (2 per node).
TORCH_DDP = ("-m", "examples.torch_ddp")
TORCH_FSDP = ("python3", "-m", "examples.torch_fsdp")
TORCHRUN = ("--launcher", "torchrun", "--nproc-per-node", "2")
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
               submit_args: tuple[str, ...] = (), user: str = "alice",
               program: tuple[str, ...] = TRAINER) -> Training:
        for directory in (f"/shared/ckpt/{name}", f"/shared/logs/{name}"):
            cluster.exec("login", ["rm", "-rf", directory])
        result = cluster.exec("login", [
            "slurmkit", "submit", SPEC, "-J", name, "--checkpoint-dir", f"/shared/ckpt/{name}",
            "--log-dir", f"/shared/logs/{name}", "--health-since", "off", "--json",
            *submit_args, "--", *program, "--steps", str(steps), *trainer_args], user=user)
        output = json.loads(result.stdout)
        return cls(cluster, name, output["job_id"], steps, output, user)

    @property
    def client(self) -> SlurmClient:
        return SlurmClient(ContainerRunner(self.cluster, "login", self.user))

    def events(self) -> list[dict]:
        return remote_events(self.cluster, self.ckpt_dir)

    def log(self, run: int, rank: int = 0) -> str:
        """Task ``rank``'s log of ``run``: every attempt of it, in order (requeued jobs
        write ``-runR-T.log``, in-place restarts ``-runR.A-T.log`` per attempt A)."""
        prefix = f"{self.log_dir}/{self.name}-{self.job_id}-run{run}"
        return self.cluster.exec("login", [
            "bash", "-c", 'shopt -s nullglob; for f in "$1"-"$2".log "$1".?-"$2".log '
            '"$1".??-"$2".log; do cat "$f"; done', "log", prefix, str(rank)],
            check=False).stdout

    def logs(self, run: int) -> str:
        return self.cluster.exec("login", ["bash", "-c",
                                           f"cat {self.log_dir}/*-{self.job_id}-run{run}[-.]*.log"],
                                 check=False).stdout

    def restarts(self) -> list[dict]:
        """The supervisor's in-place restarts (``restart`` events), in order."""
        return [event for event in self.events() if event["event"] == "restart"]

    def losses(self) -> dict[int, tuple[float, int, int]]:
        """step -> (loss, run, attempt) as rank 0 logged it; a step trained again
        after a restart keeps the later value (the trajectory the job ended with)."""
        return losses_of(self.events())

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
#: The PyTorch examples' ranks (torchrun starts them as ``python3.X -u -m ...``).
TORCH_PROCESS = "^[^ ]*python3[.0-9]* (-u )?-m examples[.]torch_"


def trainer_pids(cluster: Cluster, node: str, user: str = "alice") -> list[str]:
    """PIDs of the example trainer's ranks on ``node``."""
    return cluster.exec(node, ["pgrep", "-u", user, "-f", TRAINER_PROCESS],
                        check=False).stdout.split()


def rank_pid(cluster: Cluster, node: str, rank: int, user: str = "alice") -> str:
    """PID of the trainer process of global ``rank`` on ``node`` (its SLURM_PROCID)."""
    for pid in trainer_pids(cluster, node, user):
        # As its owner: root in a container without CAP_SYS_PTRACE may not read it.
        environ = cluster.exec(node, ["cat", f"/proc/{pid}/environ"], user=user,
                               check=False).stdout
        if f"\0SLURM_PROCID={rank}\0" in f"\0{environ}":
            return pid
    raise AssertionError(f"no trainer rank {rank} on {node}")


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


def no_trainer_left(cluster: Cluster, pattern: str = TRAINER_PROCESS) -> bool:
    return all(cluster.exec(node, ["pgrep", "-f", pattern], check=False).returncode
               for node in COMPUTE_NODES if cluster.health(node) == "healthy")


def remote_events(cluster: Cluster, directory: str) -> list[dict]:
    """The events of a checkpoint directory, read on the login node (torn lines
    skipped, as ``slurmkit.ckpt.store.read_events`` does)."""
    return json_lines(cluster.exec("login", ["cat", f"{directory}/events.jsonl"],
                                   check=False).stdout)


def losses_of(events: list[dict]) -> dict[int, tuple[float, int, int]]:
    """See ``Training.losses``."""
    found = {}
    for event in events:
        if event.get("event") == "step" and "loss" in event:
            found[event["step"]] = (event["loss"], event.get("run", 0), event.get("attempt", 0))
    return found


def torch_reference(cluster: Cluster, program: tuple[str, ...], steps: int, *, ranks: int = 8,
                    extra: tuple[str, ...] = (), user: str = "alice") -> tuple[str, dict]:
    """The fault-free run of a PyTorch example: ``ranks`` processes under torchrun on
    the login node (same image, same world size as the 4-node job: its losses are the
    job's bit for bit until the world size changes). Returns its checkpoint directory
    and its losses (step -> loss)."""
    module = program[program.index("-m") + 1]
    directory = f"/tmp/reference-{module.rsplit('.', 1)[-1]}-{steps}"
    cluster.exec("login", ["rm", "-rf", directory])
    cluster.exec("login", [
        "env", f"SLURMKIT_CKPT_DIR={directory}", "torchrun", "--standalone",
        f"--nproc-per-node={ranks}", "-m", module, "--steps", str(steps),
        "--periodic-steps", "0", *extra], user=user, timeout_s=900)
    losses = losses_of(remote_events(cluster, directory))
    return directory, {step: loss for step, (loss, _, _) in losses.items()}


def compare_weights(cluster: Cluster, first: str, second: str, user: str = "alice") -> dict:
    """The final parameters of two PyTorch runs (their newest checkpoints), compared
    on the login node: ``{"max_rel_diff", "bitwise", "steps", "params"}``."""
    result = cluster.exec("login", ["python3", "-m", "examples.torch_train", "compare",
                                    first, second], user=user, timeout_s=300)
    return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class InPlaceRecovery:
    """One in-place restart as the job recorded it, timed from the fault."""

    restart: dict  # the supervisor's ``restart`` event
    first_step: dict  # rank 0's first ``step`` event of the new attempt
    last_step_before: int  # the last step rank 0 logged in the attempt that failed
    fault_epoch_s: float  # when the fault was injected (the test's clock)

    @property
    def resumed_after_s(self) -> float:
        """Fault -> first resumed step: what the job lost to the failure."""
        return self.first_step["time_epoch_s"] - self.fault_epoch_s

    @property
    def steps_lost(self) -> int:
        """Steps done before the fault that the resumed attempt had to redo."""
        return max(0, self.last_step_before - (self.restart.get("checkpoint_step") or 0))


def wait_in_place_recovery(training: Training, fault_epoch_s: float, *, attempt: int = 1,
                           timeout_s: float = 120) -> InPlaceRecovery:
    """Wait until attempt ``attempt`` has completed its first step after an in-place
    restart; raise if the job fell back to a requeue instead."""
    def recovered():
        events = training.events()
        fallback = [e for e in events if e["event"] == "restart-fallback"]
        if fallback:
            raise AssertionError(f"the job fell back to a requeue: {fallback[-1]}")
        # The restart that followed attempt ``attempt - 1`` (a launch retry may have
        # moved it to a later attempt number).
        restarts = [e for e in events if e["event"] == "restart" and e["attempt"] >= attempt]
        resumed = restarts[0]["attempt"] if restarts else None
        steps = [e for e in events if e["event"] == "step" and e.get("attempt") == resumed
                 and e.get("run") == restarts[0]["run"]] if restarts else []
        if not steps:
            return None
        before = [e["step"] for e in events if e["event"] == "step"
                  and e.get("attempt") == attempt - 1 and e.get("run") == restarts[0]["run"]]
        return InPlaceRecovery(restarts[0], min(steps, key=lambda e: e["step"]),
                               max(before, default=0), fault_epoch_s)
    return wait_until(f"{training.name} to resume in place (attempt {attempt})", recovered,
                      timeout_s=timeout_s, interval_s=0.3)


def wait_trained(training: Training, timeout_s: float = 300) -> None:
    """Wait until the trainer wrote its final checkpoint (the job may still be
    COMPLETING on a dead node that Slurm has not declared DOWN yet)."""
    wait_until(f"{training.name} to finish training",
               lambda: any(e["event"] == "checkpoint" and e.get("kind") == "final"
                           for e in training.events()),
               timeout_s=timeout_s, interval_s=0.5)
