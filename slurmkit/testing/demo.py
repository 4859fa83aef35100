"""``make demo``: the docker-slurm cluster end to end, narrated.

From the host, as a user on a laptop would, through SSH to the login node:
submit a 4-node requeueable job, watch it run on four containers, crash one of them,
watch Slurm declare the node down, requeue the job and restart it on the three nodes
left, then show every run in accounting and bring the node back.
"""

from __future__ import annotations

import sys
import time

from slurmkit import output
from slurmkit.errors import SlurmkitError
from slurmkit.slurm import hostlist
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.runner import SSHRunner, SSHTarget
from slurmkit.testing.cluster import Cluster, wait_until

STEPS = 90

JOB_SCRIPT = f"""#!/bin/bash
#SBATCH --job-name=demo-elastic
#SBATCH --nodes=3-4
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --output=/shared/demo/%x-%j.out
#SBATCH --open-mode=append
echo "run ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NUM_NODES nodes: $SLURM_JOB_NODELIST"
srun bash -c 'for step in $(seq 1 {STEPS}); do echo "$(hostname) step $step"; sleep 1; done'
"""


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    cluster = Cluster()
    try:
        cluster.up()
        cluster.exec("login", ["install", "-d", "-m", "1777", "/shared/demo"])
        with SSHRunner(SSHTarget.parse(cluster.ssh_target("alice")),
                       key_path=cluster.ssh_key_path("alice"),
                       known_hosts_path=cluster.known_hosts_path) as runner:
            return run_demo(cluster, SlurmClient(runner))
    except SlurmkitError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


def run_demo(cluster: Cluster, slurm: SlurmClient) -> int:
    say(f"cluster: {len(slurm.nodes())} compute nodes, ssh {cluster.ssh_target('alice')}")
    print(output.table(["NODE", "STATE", "GPUS"],
                       [(n.name, n.state, n.gpus) for n in slurm.nodes()]))

    say("submitting a 4-node requeueable job (--nodes=3-4) over SSH")
    job_id = slurm.submit(JOB_SCRIPT).job_id
    print(f"job {job_id}")
    job = wait_until("the job to start", lambda: _running(slurm, job_id), timeout_s=120)
    print(f"running on {hostlist.compress(job.nodes)}")
    victim = job.nodes[-1]

    wait_until("the job to make progress", lambda: "step 5" in _log(cluster, job_id),
               timeout_s=60)
    say(f"crashing {victim} (docker kill) while the job runs")
    crashed_at = time.monotonic()
    cluster.crash(victim)
    wait_until(f"Slurm to notice {victim} is gone",
               lambda: slurm.node_states().get(victim, frozenset()) & {"DOWN", "NOT_RESPONDING"},
               timeout_s=120)
    print(f"{victim} is {'+'.join(sorted(slurm.node_states()[victim]))} "
          f"after {time.monotonic() - crashed_at:.0f} s")

    say("Slurm requeues the job; it restarts on the nodes that are left")
    job = wait_until("the job to run again", lambda: (j := _running(slurm, job_id))
                     and j.restart_count >= 1 and j, timeout_s=240)
    print(f"run {job.restart_count} started {time.monotonic() - crashed_at:.0f} s after the "
          f"crash on {len(job.nodes)} nodes: {hostlist.compress(job.nodes)}")

    say(f"waiting for the job to finish ({STEPS} steps)")
    wait_until("the job to finish", lambda: not slurm.jobs(job_ids=[job_id]) or
               slurm.jobs(job_ids=[job_id])[0].state not in ("PENDING", "RUNNING", "COMPLETING"),
               timeout_s=STEPS + 120)
    runs = wait_until("accounting of the last run",
                      lambda: (r := sorted(slurm.accounting(job_ids=[job_id]),
                                           key=lambda x: x.restarts))
                      and r[-1].end_epoch_s and r, timeout_s=60)

    say("sacct -D: every run of the job")
    print(output.table(["RUN", "STATE", "NODES", "ELAPSED_S"],
                       [(r.restarts, r.state, hostlist.compress(r.nodes), r.elapsed_s)
                        for r in runs]))
    log_lines = _log(cluster, job_id).splitlines()
    print("\njob log (run headers):")
    for line in log_lines:
        if line.startswith("run "):
            print("  " + line)

    say(f"restarting {victim}")
    cluster.restore(victim)
    print(f"{victim} is {'+'.join(sorted(slurm.node_states()[victim]))}")
    ok = runs[0].state == "NODE_FAIL" and runs[-1].state == "COMPLETED"
    say("demo " + ("complete: the job survived the node crash" if ok else "FAILED"))
    return 0 if ok else 1


def _running(slurm: SlurmClient, job_id: int):
    jobs = slurm.jobs(job_ids=[job_id])
    return jobs[0] if jobs and jobs[0].state == "RUNNING" else None


def _log(cluster: Cluster, job_id: int) -> str:
    result = cluster.exec("login", ["cat", f"/shared/demo/demo-elastic-{job_id}.out"],
                          check=False)
    return result.stdout


if __name__ == "__main__":
    sys.exit(main())
