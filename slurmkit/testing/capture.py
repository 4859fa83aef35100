"""Capture real Slurm 24.11 accounting of known scenarios from the docker-slurm
cluster, for the goodput unit tests (``tests/unit/data/sacct_real.*``).

    python -m slurmkit.testing.capture [--out tests/unit/data]

Scenarios (each a job whose truth is known by construction):

- ``array``: ``--array=1-3``; task 3 fails, task 2 is requeued by ``scontrol requeue``
  while it runs and then completes;
- ``het``: a heterogeneous job of two components;
- ``pipe``, ``unicode``: names with ``|`` and with non-ASCII letters;
- ``resize``: a 2-node ``--no-kill`` job whose second node is set DOWN while it runs
  (Slurm shrinks it: a RESIZING record), then completes;
- ``nodefail``: a ``--requeue`` 2-node job whose second node is crashed (NODE_FAIL,
  requeued, completes);
- ``preempted``: a borrowed 3-node training job preempted with a grace time by a
  guaranteed 2-node inference job, requeued by Slurm; its next run ends cleanly;
- ``preempted_self_requeue``: the same job, which requeues itself with ``scontrol
  requeue`` when its step ends: Slurm 24.11 records that run REQUEUED, then records the
  next clean run PREEMPTED and requeues it once more (its stale grace flag; see
  ``PREEMPTED_SCRIPT``): the capture says whether it did.

Writes ``sacct_real.json`` (``sacct -D -X --json``), ``sacct_real_parsable2.txt``
(``--parsable2`` with its header, columns in a shuffled order, the name in the middle)
and ``sacct_real_truth.json`` (per scenario: its job ids and what happened).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from slurmkit.testing.cluster import COMPUTE_NODES, REPO_ROOT, Cluster, exclusive_use, wait_until

USER = "alice"
COLUMNS = ["JobID", "JobIDRaw", "User", "Account", "Partition", "QOS", "State", "Restarts",
           "Submit", "Eligible", "Start", "End", "NNodes", "NodeList", "AllocTRES", "ExitCode",
           "JobName"]


def sbatch(cluster: Cluster, args: list[str], script: str, user: str = USER) -> int:
    result = cluster.exec("login", ["sbatch", "--parsable", "-o", "/dev/null", *args],
                          user=user, input_text=script)
    return int(result.stdout.strip().split(";")[0])


def state(cluster: Cluster, job: str) -> str:
    result = cluster.exec("ctl", ["squeue", "--noheader", "--format=%T", f"--jobs={job}"],
                          check=False)
    return result.stdout.strip() or "GONE"


def wait_gone(cluster: Cluster, jobs: list[int], timeout_s: float = 300) -> None:
    wait_until(f"jobs {jobs} to finish", lambda: all(
        state(cluster, str(job)) == "GONE" for job in jobs), timeout_s=timeout_s,
               interval_s=1)


def scenario_array(cluster: Cluster) -> dict:
    script = ("#!/bin/bash\n"
              "case $SLURM_ARRAY_TASK_ID in\n"
              "  2) [ \"${SLURM_RESTART_COUNT:-0}\" -ge 1 ] && exit 0; sleep 60 ;;\n"
              "  3) sleep 2; exit 3 ;;\n"
              "  *) sleep 2 ;;\nesac\n")
    job = sbatch(cluster, ["-J", "sweep", "--array=1-3", "--requeue", "-N1"], script)
    wait_until("task 2 to run", lambda: state(cluster, f"{job}_2") == "RUNNING",
               timeout_s=120)
    cluster.exec("ctl", ["scontrol", "requeue", f"{job}_2"])
    wait_gone(cluster, [job])
    return {"job": job, "expect": {f"{job}_1": [1, "COMPLETED"], f"{job}_2": [2, "COMPLETED"],
                                   f"{job}_3": [1, "FAILED"]}}


def scenario_het(cluster: Cluster) -> dict:
    script = "#!/bin/bash\n#SBATCH -N1 -J het\n#SBATCH hetjob\n#SBATCH -N1\nsrun true\n"
    job = sbatch(cluster, [], script)
    wait_gone(cluster, [job])
    return {"job": job, "expect": {f"{job}+0": [1, "COMPLETED"],
                                   f"{job}+1": [1, "COMPLETED"]}}


def scenario_names(cluster: Cluster) -> dict:
    names = {"pipe": "train|v2|lr=3e-4", "unicode": "tränö-日本-λ"}
    jobs = {key: sbatch(cluster, ["-J", name, "-N1"], "#!/bin/bash\nsleep 1\n")
            for key, name in names.items()}
    wait_gone(cluster, list(jobs.values()))
    return {"jobs": jobs, "names": names,
            "expect": {str(job): [1, "COMPLETED"] for job in jobs.values()}}


def scenario_resize(cluster: Cluster) -> dict:
    job = sbatch(cluster, ["-J", "nokill", "-N2", "--no-kill"],
                 "#!/bin/bash\nwhile [ ! -e /shared/capture-resize-go ]; do sleep 0.5; done\n"
                 "sleep 2\n")
    wait_until("the resize job to run", lambda: state(cluster, str(job)) == "RUNNING",
               timeout_s=120)
    nodes = cluster.exec("ctl", ["squeue", "--noheader", "--format=%N", f"--jobs={job}"]
                         ).stdout.strip()
    second = cluster.exec("ctl", ["scontrol", "show", "hostnames", nodes]).stdout.split()[1]
    cluster.exec("ctl", ["scontrol", "update", f"NodeName={second}", "State=DOWN",
                         "Reason=capture: resize"])
    wait_until("slurmctld to shrink the job", lambda: cluster.exec("ctl", [
        "squeue", "--noheader", "--format=%D", f"--jobs={job}"]).stdout.strip() == "1",
               timeout_s=60)
    cluster.exec("login", ["touch", "/shared/capture-resize-go"])
    wait_gone(cluster, [job])
    cluster.exec("ctl", ["scontrol", "update", f"NodeName={second}", "State=RESUME"],
                 check=False)
    cluster.exec("login", ["rm", "-f", "/shared/capture-resize-go"])
    cluster.wait_nodes_up(COMPUTE_NODES)
    return {"job": job, "node_downed": second, "expect": {str(job): [1, "COMPLETED"]}}


def scenario_nodefail(cluster: Cluster) -> dict:
    job = sbatch(cluster, ["-J", "crashy", "-N2", "--requeue"],
                 "#!/bin/bash\n[ \"${SLURM_RESTART_COUNT:-0}\" -ge 1 ] && exit 0\nsleep 300\n")
    wait_until("the node-fail job to run", lambda: state(cluster, str(job)) == "RUNNING",
               timeout_s=120)
    nodes = cluster.exec("ctl", ["squeue", "--noheader", "--format=%N", f"--jobs={job}"]
                         ).stdout.strip()
    victim = cluster.exec("ctl", ["scontrol", "show", "hostnames", nodes]).stdout.split()[1]
    cluster.crash(victim)
    try:
        wait_until("the requeue", lambda: state(cluster, str(job)) in ("PENDING", "GONE"),
                   timeout_s=180)
    finally:
        cluster.restore(victim)
    wait_gone(cluster, [job])
    return {"job": job, "victim": victim, "expect": {str(job): [2, "COMPLETED"]}}


#: The preempted job's script. Its first run waits in a step; the grace time's SIGTERM
#: goes to the steps, not to the batch shell, so the step ends and the script carries
#: on. Plain: it exits and Slurm requeues it (PREEMPTED). Self-requeueing (as a job script
#: that handles its own requeue does, and as slurmkit's template did before it asked for
#: PreemptTime): it runs ``scontrol requeue`` on itself while still running. That path
#: records REQUEUED and leaves the job's grace-preemption flag set (slurmctld clears it
#: only when it requeues a preempted job itself), so the next run, which ends cleanly,
#: is recorded PREEMPTED and requeued once more: Slurm's spurious requeue.
PREEMPTED_SCRIPT = """#!/bin/bash
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then sleep 3; exit 0; fi
srun sleep 300
%s
"""
SELF_REQUEUE = """scontrol requeue "$SLURM_JOB_ID"; sleep 60"""


def scenario_preempted(cluster: Cluster, self_requeue: bool = False) -> dict:
    """A borrowed 3-node training preempted (grace time, then requeue) by inference."""
    from tests.cluster.conftest import POLICY, POLICY_PATH

    script = PREEMPTED_SCRIPT % (SELF_REQUEUE if self_requeue else "")
    cluster.exec("ctl", ["tee", POLICY_PATH], input_text=POLICY)
    cluster.exec("ctl", ["slurmkit", "policy", "install", POLICY_PATH])
    try:
        victim = sbatch(cluster, ["-J", "borrower", "-A", "team-b", "--qos=training", "-N3",
                                  "--gpus-per-node=8", "--requeue"], script, user="bob")
        wait_until("the borrower to run", lambda: state(cluster, str(victim)) == "RUNNING",
                   timeout_s=120)
        owner = sbatch(cluster, ["-J", "owner", "-A", "team-a", "--qos=inference", "-N2",
                                 "--gpus-per-node=8"], "#!/bin/bash\nsleep 20\n")
        wait_gone(cluster, [victim, owner], timeout_s=600)
    finally:
        cluster.cancel_test_jobs()
        cluster.reset_policy()
    records = json.loads(cluster.exec("ctl", ["sacct", "-D", "-X", "--json",
                                              f"--jobs={victim}"]).stdout)["jobs"]
    states = [record["state"]["current"][0] for record in sorted(
        records, key=lambda r: r["restart_cnt"])]
    # The first run is the one preempted (recorded PREEMPTED, or REQUEUED when the job
    # requeued itself); a later PREEMPTED record has no preemptor.
    spurious = states[1:].count("PREEMPTED")
    return {"job": victim, "owner": owner, "states": states, "spurious": spurious,
            "expect": {str(victim): [len(states), "COMPLETED"], str(owner): [1, "COMPLETED"]}}


def scenario_preempted_self_requeue(cluster: Cluster) -> dict:
    return scenario_preempted(cluster, self_requeue=True)


SCENARIOS = {"array": scenario_array, "het": scenario_het, "names": scenario_names,
             "resize": scenario_resize, "nodefail": scenario_nodefail,
             "preempted": scenario_preempted,
             "preempted_self_requeue": scenario_preempted_self_requeue}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurmkit.testing.capture")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "unit" / "data")
    args = parser.parse_args(argv)
    cluster = Cluster()
    with exclusive_use("capturing accounting"):
        cluster.up()
        cluster.cancel_test_jobs()
        cluster.reset_policy()
        cluster.set_profile("fast")
        truth = {name: run(cluster) for name, run in SCENARIOS.items()}
    job_ids = sorted({str(value) for scenario in truth.values()
                      for key in ("job", "owner") if (value := scenario.get(key))}
                     | {str(job) for job in truth["names"]["jobs"].values()})
    jobs = f"--jobs={','.join(job_ids)}"
    time.sleep(5)  # slurmdbd records the last end times a moment after the jobs leave
    text = cluster.exec("ctl", ["sacct", "-D", "-X", "--json", "--allusers", jobs]).stdout
    (args.out / "sacct_real.json").write_text(text, encoding="utf-8")
    columns = COLUMNS[:]
    random.Random(24).shuffle(columns)
    columns.remove("JobName")
    columns.insert(len(columns) // 2, "JobName")  # free text in the middle: the hard case
    text = cluster.exec("ctl", ["sacct", "-D", "-X", "--parsable2", "--allusers", jobs,
                                f"--format={','.join(columns)}"]).stdout
    (args.out / "sacct_real_parsable2.txt").write_text(text, encoding="utf-8")
    (args.out / "sacct_real_truth.json").write_text(json.dumps(truth, indent=1,
                                                               ensure_ascii=False) + "\n")
    print(json.dumps(truth, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
