"""``make demo``: the whole story on the docker-slurm cluster, narrated, at Slurm's
default timeouts (SlurmdTimeout=300, cred_expire=120: what a real site runs).

From the host, as from a laptop, through SSH to the login node: submit a data-parallel
training job with ``slurmkit submit`` (placed on the switch tree), watch it train on 4
nodes. Act 1: crash a node; the ranks notice within a second, the survivors write a
triggered checkpoint of the last completed step and ``slurmkit launch`` restarts the
training on the 3 nodes left, inside the allocation, seconds after the crash, while
Slurm has not even noticed. Act 2: crash the batch host; nothing can restart in place,
so the survivors checkpoint and ask Slurm for a requeue, which takes minutes at these
timeouts: the two recovery times side by side. The job finishes with final weights
bit-for-bit equal to a run that never failed; then its goodput report.

    make demo                      # both acts (about 10 minutes: act 2 is Slurm's wait)
    DEMO_ACTS=1 make demo          # act 1 only (about 2 minutes)
    make demo DEMO=torch           # the same with the PyTorch DDP job under torchrun:
                                   # resharded 8 -> 6 ranks, weights within 1e-4

With ``DEMO=torch`` the job is ``examples.torch_ddp`` (torchrun, 2 workers a node); a
restart on fewer ranks sums gradients in another order, so its result is compared
with the fault-free run within 1e-4 (and bitwise before the first restart).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from slurmkit import output
from slurmkit.errors import SlurmkitError
from slurmkit.slurm import hostlist
from slurmkit.testing.cluster import REPO_ROOT, Cluster, exclusive_use, wait_until
from slurmkit.testing.training import (
    TORCH_DDP,
    TORCHRUN,
    TRAINER,
    Training,
    compare_weights,
    reference_sha,
    torch_reference,
    wait_in_place_recovery,
    wait_trained,
)


@dataclass(frozen=True)
class Job:
    """What the demo runs."""

    name: str
    program: tuple[str, ...]
    submit_args: tuple[str, ...]
    steps: int
    what: str


JOBS = {"numpy": Job("demo-train", TRAINER, (), 200,
                     "the example trainer (NumPy, deterministic data parallel), 2 ranks per node"),
        "torch": Job("demo-torch", TORCH_DDP, TORCHRUN, 80,
                     "a PyTorch DDP job under torchrun (2.2M-parameter MLP, gloo), "
                     "2 workers per node")}


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    cluster = Cluster()
    acts = os.environ.get("DEMO_ACTS", "2")
    kind = os.environ.get("DEMO") or "numpy"
    if kind not in JOBS:
        print(f"DEMO={kind!r}: choose one of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    try:
        with exclusive_use("make demo"):
            cluster.up()
            cluster.reset_policy()
            cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/ckpt", "/shared/logs"])
            cluster.set_profile("site")
            try:
                return run_demo(cluster, JOBS[kind], two_acts=acts != "1")
            finally:
                cluster.set_profile("fast")
    except SlurmkitError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


def submit_over_ssh(cluster: Cluster, job: Job) -> Training:
    name = job.name
    for directory in (f"/shared/ckpt/{name}", f"/shared/logs/{name}"):
        cluster.exec("login", ["rm", "-rf", directory])
    argv = [sys.executable, "-m", "slurmkit", "--host", cluster.ssh_target("alice"),
            "--ssh-key", str(cluster.ssh_key_path("alice")),
            "--known-hosts", str(cluster.known_hosts_path),
            "submit", "examples/specs/train.toml", "-J", name, *job.submit_args,
            "--checkpoint-dir", f"/shared/ckpt/{name}", "--log-dir", f"/shared/logs/{name}",
            "--health-since", "off", "--explain", "--json", "--",
            *job.program, "--steps", str(job.steps)]
    print("$ slurmkit --host " + cluster.ssh_target("alice")
          + f" submit examples/specs/train.toml -J {name} {' '.join(job.submit_args)}"
          + f" ... --explain -- {' '.join(job.program)} --steps {job.steps}")
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SlurmkitError(f"slurmkit submit failed: {result.stderr.strip()}")
    print(result.stderr.rstrip())
    submitted = json.loads(result.stdout)
    return Training(cluster, name, submitted["job_id"], job.steps, submitted)


def slurm_sees(cluster: Cluster, node: str) -> str:
    return "+".join(cluster.node_states().get(node, ["?"]))


def act_one(cluster: Cluster, training: Training, randomness: random.Random) -> float:
    """A node dies: in place, within seconds. Returns the fault -> resumed seconds."""
    steps = training.steps
    training.wait_step(randomness.randint(steps * 3 // 20, steps * 3 // 10), timeout_s=600)
    nodes = [e for e in training.events() if e["event"] == "attempt-start"][0]["nodes"]
    victim = randomness.choice(nodes[1:])
    if training.last_step() >= steps - 1:
        raise SlurmkitError(f"{training.name} reached step {training.last_step()} of {steps} "
                            "before act one could crash a node: nothing left to recover")
    say(f"act 1, step {training.last_step()}: crashing {victim} (docker kill)")
    crashed_at = time.time()
    cluster.crash(victim)
    recovery = wait_in_place_recovery(training, crashed_at)
    restart = recovery.restart
    print(f"the ranks declared {victim} lost {restart['detected_epoch_s'] - crashed_at:.1f} s "
          f"after the crash (heartbeat)")
    print(f"the survivors saved step {restart['checkpoint_step']} (the last completed: "
          f"{recovery.last_step_before}) {restart['checkpoint_epoch_s'] - crashed_at:.1f} s "
          "after the crash")
    print(f"slurmkit launch started the next step on {', '.join(restart['nodes'])} "
          f"{restart['launched_epoch_s'] - crashed_at:.1f} s after the crash")
    print(f"training resumed at step {recovery.first_step['step']}, "
          f"{recovery.resumed_after_s:.1f} s after the crash, no step lost")
    print(f"meanwhile Slurm still sees {victim} as {slurm_sees(cluster, victim)} "
          "(SlurmdTimeout=300 s: it has not noticed)")
    cluster.restore(victim)  # the node is repaired; Slurm takes it out of the job
    return recovery.resumed_after_s


def act_two(cluster: Cluster, training: Training, randomness: random.Random) -> float:
    """The batch host dies: only a requeue helps. Returns the fault -> resumed seconds."""
    steps = training.steps
    training.wait_step(training.last_step() + randomness.randint(steps // 10, steps // 5),
                       timeout_s=600)
    job = training.job()
    victim = job.batch_host or job.nodes[0]
    say(f"act 2, step {training.last_step()}: crashing the batch host {victim}")
    crashed_at = time.time()
    cluster.crash(victim)
    request = wait_until("the survivors' requeue request", lambda: [
        e for e in training.events() if e["event"] == "requeue-requested"], timeout_s=120)[0]
    saved = max((e["step"] for e in training.events() if e["event"] == "checkpoint"
                 and e.get("committed") and e.get("run") == 0), default=None)
    print(f"the survivors saved step {saved} and asked Slurm for a requeue "
          f"{request['time_epoch_s'] - crashed_at:.1f} s after the crash")
    print("Slurm requeues the job once it declares the node DOWN (SlurmdTimeout=300 s), "
          "then holds it for cred_expire (120 s)")
    last_note = time.time()

    def resumed():
        nonlocal last_note
        steps = [e for e in training.events() if e["event"] == "step" and e["run"] >= 1]
        if not steps and time.time() - last_note >= 60:
            last_note = time.time()
            state = (training.job().state if training.job() else "gone")
            print(f"  {time.time() - crashed_at:.0f} s: job {state}, Slurm sees {victim} as "
                  f"{slurm_sees(cluster, victim)}", flush=True)
        return steps[0] if steps else None

    first = wait_until("the requeued run's first step", resumed, timeout_s=900, interval_s=1)
    seconds = first["time_epoch_s"] - crashed_at
    print(f"the requeued run resumed at step {first['step']}, {seconds:.0f} s after the crash")
    cluster.restore(victim)
    return seconds


def run_demo(cluster: Cluster, job: Job, *, two_acts: bool) -> int:
    randomness = random.Random()
    say("the cluster: 4 nodes x 8 GPUs on two leaf switches, Slurm's default timeouts")
    nodes = Training(cluster, job.name, 0, 0, {}).client.nodes()
    print(output.table(["NODE", "STATE", "GPUS"], [(n.name, n.state, n.gpus) for n in nodes]))
    config = cluster.slurm_config()
    print(f"SlurmdTimeout={config.get('SlurmdTimeout')} MessageTimeout="
          f"{config.get('MessageTimeout')} {config.get('AuthInfo')}")

    say(f"submitting a training job (nodes 3-4) over SSH: {job.what}")
    training = submit_over_ssh(cluster, job)
    print(f"job {training.job_id}, pinned to {training.submit_output['placement']['nodelist']}; "
          "sbatch --no-kill: the allocation outlives a lost node")
    inplace_s = act_one(cluster, training, randomness)
    requeue_s = act_two(cluster, training, randomness) if two_acts else None
    say(f"training on to step {job.steps}")
    wait_trained(training, timeout_s=600)
    records = training.wait_finished(timeout_s=600)
    # The fault-free reference comes after the job, never beside it: run first, it let
    # a fast job finish before act one could crash a node; run beside it, it would take
    # the job's CPU and its recovery times with it.
    if job.program == TRAINER:
        say("the fault-free reference result, computed by one process")
        reference = reference_sha(cluster, job.steps)
    else:
        say("the fault-free reference run, 8 ranks under torchrun on the login node")
        reference, reference_losses = torch_reference(cluster, job.program, job.steps)

    say("sacct -D: every record of the job (RESIZING: Slurm shrank the --no-kill job)")
    print(output.table(["RUN", "STATE", "NODES", "ELAPSED_S"],
                       [(r.restarts, r.state, hostlist.compress(r.nodes), r.elapsed_s)
                        for r in records]))
    say(f"slurmkit goodput --job {training.job_id}: where this job's GPU-hours went")
    report_argv = ["slurmkit", "goodput", "--job", str(training.job_id),
                   "--events", training.ckpt_dir, "--no-progress"]
    print(cluster.exec("login", report_argv, user="alice").stdout.rstrip())
    html_path = f"/shared/logs/{job.name}/goodput.html"
    cluster.exec("login", [*report_argv, "--format", "html", "-o", html_path], user="alice")
    print(f"(HTML report with plots: {html_path} in the cluster; docker cp "
          f"{cluster.container('login')}:{html_path} . to open it)")
    say("recovery, fault -> first resumed step, at Slurm's default timeouts")
    rows = [("in place (slurmkit launch): a node lost", f"{inplace_s:.1f}")]
    if requeue_s is not None:
        rows.append(("requeue (Slurm): the batch host lost", f"{requeue_s:.1f}"))
    print(output.table(["PATH", "SECONDS"], rows))
    say("result")
    if job.program == TRAINER:
        final = training.final_sha()
        print(f"final weights sha256 {final}")
        print(f"fault-free reference  {reference}")
        ok = final == reference and records[-1].state == "COMPLETED"
        same = "bit-for-bit the same weights"
    else:
        weights = compare_weights(cluster, training.ckpt_dir, reference)
        losses = training.losses()
        worst = max(abs(loss - reference_losses[step]) / abs(reference_losses[step])
                    for step, (loss, _, _) in losses.items())
        print(f"final weights vs the fault-free run: largest relative difference "
              f"{weights['max_rel_diff']:.2e} over {weights['params']:,} parameters")
        print(f"losses of all {len(losses)} steps: largest relative difference {worst:.2e}")
        ok = (weights["max_rel_diff"] <= 1e-4 and worst <= 1e-4
              and records[-1].state == "COMPLETED")
        same = "the fault-free run's weights and losses (within 1e-4)"
    say("demo " + (f"complete: the job lost nodes, lost no work, and finished with {same}"
                   if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
