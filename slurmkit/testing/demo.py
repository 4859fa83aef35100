"""``make demo``: the whole story on the docker-slurm cluster, narrated.

From the host, as from a laptop, through SSH to the login node: submit a data-parallel
training job with ``slurmkit submit`` (placed on the switch tree), watch it train on
4 nodes, crash one of them, watch the survivors write a triggered checkpoint of the
last completed step, Slurm requeue the job, the job restart on the 3 nodes left with a
re-planned layout, resume from that step and finish — with final weights bit-for-bit
equal to a run that never failed — then the goodput report of that job.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from slurmkit import output
from slurmkit.errors import SlurmkitError
from slurmkit.slurm import hostlist
from slurmkit.testing.cluster import REPO_ROOT, Cluster, exclusive_use, wait_until
from slurmkit.testing.training import Training, reference_sha, survivors_save

STEPS = 200
NAME = "demo-train"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    cluster = Cluster()
    try:
        with exclusive_use("make demo"):
            cluster.up()
            cluster.reset_policy()
            cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/ckpt", "/shared/logs"])
            return run_demo(cluster)
    except SlurmkitError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


def submit_over_ssh(cluster: Cluster) -> Training:
    for directory in (f"/shared/ckpt/{NAME}", f"/shared/logs/{NAME}"):
        cluster.exec("login", ["rm", "-rf", directory])
    argv = [sys.executable, "-m", "slurmkit", "--host", cluster.ssh_target("alice"),
            "--ssh-key", str(cluster.ssh_key_path("alice")),
            "--known-hosts", str(cluster.known_hosts_path),
            "submit", "examples/specs/train.toml", "-J", NAME,
            "--checkpoint-dir", f"/shared/ckpt/{NAME}", "--log-dir", f"/shared/logs/{NAME}",
            "--health-since", "off", "--explain", "--json", "--",
            "python3", "-m", "examples.trainer", "--steps", str(STEPS)]
    print("$ slurmkit --host " + cluster.ssh_target("alice")
          + f" submit examples/specs/train.toml -J {NAME} ... --explain")
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SlurmkitError(f"slurmkit submit failed: {result.stderr.strip()}")
    print(result.stderr.rstrip())
    submitted = json.loads(result.stdout)
    return Training(cluster, NAME, submitted["job_id"], STEPS, submitted)


def run_demo(cluster: Cluster) -> int:
    say("the cluster: 4 nodes x 8 GPUs on two leaf switches")
    nodes = Training(cluster, NAME, 0, 0, {}).client.nodes()
    print(output.table(["NODE", "STATE", "GPUS"], [(n.name, n.state, n.gpus) for n in nodes]))

    say("submitting a training job (nodes 3-4, 2 ranks per node) over SSH")
    training = submit_over_ssh(cluster)
    print(f"job {training.job_id}, pinned to {training.submit_output['placement']['nodelist']}")
    print("meanwhile: the fault-free reference result, computed by one process")
    reference = reference_sha(cluster, STEPS)

    crash_step = random.randint(40, 100)
    training.wait_step(crash_step)
    running = training.job()
    victim = random.choice(running.nodes)
    say(f"step {training.last_step()}: crashing {victim} (docker kill)")
    crashed_at = time.time()
    cluster.crash(victim)
    try:
        saved_step, kept_by = wait_until("the survivors' triggered checkpoint",
                                         lambda: survivors_save(training.events()),
                                         timeout_s=120)
        saves = [e for e in training.events() if e.get("kind") == "triggered"
                 and e["event"] in ("checkpoint", "checkpoint-exists")]
        first = saves[0]
        if kept_by == "triggered":
            print(f"triggered checkpoint of step {saved_step} written by rank "
                  f"{first['rank']} on {first['host']}, "
                  f"{first['time_epoch_s'] - crashed_at:.1f} s after the crash "
                  f"(last step logged before the crash: {training.last_step(0)})")
        else:
            print(f"the survivors found step {saved_step} already saved by the periodic "
                  f"checkpoint just before the crash: nothing to write "
                  f"(last step logged before the crash: {training.last_step(0)})")
        say("Slurm declares the node down and requeues the job")
        start = wait_until("the restarted run", lambda: [
            e for e in training.events() if e["event"] == "run-start" and e["run"] >= 1],
            timeout_s=300)[0]
        layout = start["layout"]
        print(f"run 1 started {start['time_epoch_s'] - crashed_at:.0f} s after the crash with "
              f"{start['ranks']} ranks: re-planned dp={layout['dp']} "
              f"grad_accum={layout['grad_accum']} (global batch {layout['global_batch']} kept)")
        resumed = wait_until("the first resumed step", lambda: [
            e for e in training.events() if e["event"] == "step" and e["run"] >= 1],
            timeout_s=120)[0]
        print(f"resumed at step {resumed['step']}, "
              f"{resumed['time_epoch_s'] - crashed_at:.0f} s after the crash")
        say(f"training on to step {STEPS}")
        runs = training.wait_finished()
    finally:
        cluster.restore(victim)

    say("sacct -D: every run of the job")
    print(output.table(["RUN", "STATE", "NODES", "ELAPSED_S"],
                       [(r.restarts, r.state, hostlist.compress(r.nodes), r.elapsed_s)
                        for r in runs]))
    say(f"slurmkit goodput --job {training.job_id}: where this job's GPU-hours went")
    report_argv = ["slurmkit", "goodput", "--job", str(training.job_id),
                   "--events", training.ckpt_dir, "--no-progress"]
    print(cluster.exec("login", report_argv, user="alice").stdout.rstrip())
    html_path = f"/shared/logs/{NAME}/goodput.html"
    cluster.exec("login", [*report_argv, "--format", "html", "-o", html_path], user="alice")
    print(f"(HTML report with plots: {html_path} in the cluster; docker cp "
          f"{cluster.container('login')}:{html_path} . to open it)")
    final = training.final_sha()
    say("result")
    print(f"final weights sha256 {final}")
    print(f"fault-free reference  {reference}")
    ok = final == reference and runs[-1].state == "COMPLETED"
    say("demo " + ("complete: the job lost a node, lost no work, and finished with "
                   "bit-for-bit the same weights" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
