"""Real node failures: a killed container and a network cut, seen by Slurm, recorded
in accounting, undone, and remembered by `slurmkit submit`'s node health."""

import json
import time

from slurmkit.slurm.hostlist import expand
from slurmkit.testing.cluster import COMPUTE_NODES, wait_until

_SLEEPER = "#!/bin/bash\nsrun sleep 600\n"
_DEAD = {"DOWN", "NOT_RESPONDING"}


def test_failed_nodes_fail_their_jobs_per_their_flags_come_back_and_are_avoided(
        cluster, slurm, jobs, spec_path, leaf_of):
    requeueable = jobs.submit(_SLEEPER, ["-N2", "--requeue", "-J", "survivor"])
    running = jobs.wait_state(requeueable, {"RUNNING"})
    victim = running.nodes[-1]
    fragile = jobs.submit(_SLEEPER, ["-N1", "--no-requeue", f"--nodelist={victim}",
                                     "-J", "fragile"])
    jobs.wait_state(fragile, {"RUNNING"})
    # Both failure modes at once (their detection times overlap): the victim's container
    # is killed, and a node outside both jobs is cut off the network.
    bystander = next(node for node in COMPUTE_NODES if node not in running.nodes)

    crashed_at = time.monotonic()
    cluster.crash(victim)
    cluster.cut(bystander)

    # sinfo sees the node go away (SlurmdTimeout=15 in docker-slurm's slurm.conf).
    states = wait_until(f"sinfo to show {victim} down",
                        lambda: (flags := slurm.node_states().get(victim, frozenset()))
                        & _DEAD and flags, timeout_s=120)
    detected_s = time.monotonic() - crashed_at
    assert states & _DEAD, states

    # The cut-off node is unresponsive too, although its container never stopped;
    # reconnected, it is back in service.
    wait_until(f"sinfo to show {bystander} not responding",
               lambda: slurm.node_states().get(bystander, frozenset()) & _DEAD, timeout_s=120)
    assert cluster.container_state(bystander).get("Running") is True
    cluster.restore(bystander, register_now=True)
    wait_until(f"{bystander} back in service",
               lambda: not slurm.node_states()[bystander] & _DEAD, timeout_s=180)

    # The requeueable job: its first run is recorded as NODE_FAIL and it runs again.
    runs = jobs.wait_runs(requeueable, lambda runs: runs[0].state == "NODE_FAIL"
                          and len(runs) >= 2, "a NODE_FAIL run followed by a new run")
    assert runs[0].restarts == 0 and victim in runs[0].nodes
    assert runs[-1].restarts == 1
    queued = jobs.job(requeueable)
    assert queued is not None and queued.restart_count == 1
    assert queued.state in ("PENDING", "RUNNING")

    # The --no-requeue job: one NODE_FAIL run, and it left the queue for good.
    [fragile_run] = jobs.wait_runs(fragile, lambda runs: runs[-1].state == "NODE_FAIL",
                                   "NODE_FAIL")
    assert fragile_run.nodes == (victim,)
    fragile_now = jobs.job(fragile)
    assert fragile_now is None or fragile_now.state == "NODE_FAIL"

    # Restarted, the node returns to service by itself (ReturnToService=2).
    cluster.restore(victim)
    wait_until(f"{victim} idle or allocated again",
               lambda: not slurm.node_states()[victim] & {"DOWN", "NOT_RESPONDING", "DRAIN"},
               timeout_s=120)
    # And the requeued job does run again.
    rerun = jobs.wait_state(requeueable, {"RUNNING"}, timeout_s=180)
    assert rerun.restart_count == 1
    print(f"{victim} declared down {detected_s:.0f} s after the crash")

    # slurmkit submit remembers the failure, but one crash of a node that came back does
    # not make it a lemon: both jobs it killed are one incident, and it is not avoided.
    jobs.cancel_all()
    since = f"now-{int(time.monotonic() - crashed_at) + 5}seconds"  # this crash only
    result = cluster.exec("login", ["slurmkit", "submit", spec_path, "--dry-run", "--json",
                                    "--explain", "--health-since", since],
                          user="alice", check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["placement"]["exclude"] is None
    assert "NODE_FAIL run(s) in the window, 0 with no node named" in result.stderr
    assert "1 node(s) failed in the window and are back in service: not avoided" \
        in result.stderr
    # With a threshold of one failure it is a lemon: the two-node job goes to the other
    # leaf and the node is excluded outright (three nodes stay, more than the job's two).
    result = cluster.exec("login", ["slurmkit", "submit", spec_path, "--json", "--explain",
                                    "--health-since", since, "--max-node-failures", "1"],
                          user="alice", check=False)
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    jobs.job_ids.append(submitted["job_id"])
    other_leaf = sorted(node for node, leaf in leaf_of.items() if leaf != leaf_of[victim])
    assert submitted["placement"]["exclude"] == victim
    assert list(expand(submitted["placement"]["nodelist"])) == other_leaf
    assert f"excluded lemons: {victim} (1 failure(s), back in service)" in result.stderr
