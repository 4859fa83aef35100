"""Real node failures: a killed container and a network cut, seen by Slurm, recorded
in accounting, and undone."""

import time

from slurmkit.testing.cluster import wait_until

_SLEEPER = "#!/bin/bash\nsrun sleep 600\n"
_DEAD = {"DOWN", "NOT_RESPONDING"}


def test_killed_node_fails_its_jobs_per_their_flags_and_comes_back(cluster, slurm, jobs):
    requeueable = jobs.submit(_SLEEPER, ["-N2", "--requeue", "-J", "survivor"])
    running = jobs.wait_state(requeueable, {"RUNNING"})
    victim = running.nodes[-1]
    fragile = jobs.submit(_SLEEPER, ["-N1", "--no-requeue", f"--nodelist={victim}",
                                     "-J", "fragile"])
    jobs.wait_state(fragile, {"RUNNING"})

    crashed_at = time.monotonic()
    cluster.crash(victim)

    # sinfo sees the node go away (SlurmdTimeout=20 in docker-slurm's slurm.conf).
    states = wait_until(f"sinfo to show {victim} down",
                        lambda: (flags := slurm.node_states().get(victim, frozenset()))
                        & _DEAD and flags, timeout_s=120)
    detected_s = time.monotonic() - crashed_at
    assert states & _DEAD, states

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


def test_network_cut_makes_the_node_unresponsive_until_reconnected(cluster, slurm):
    victim = "c4"
    cluster.cut(victim)
    wait_until(f"sinfo to show {victim} not responding",
               lambda: slurm.node_states().get(victim, frozenset()) & _DEAD,
               timeout_s=120)
    # The container itself never stopped: only its network is gone.
    assert cluster.container_state(victim).get("Running") is True
    cluster.restore(victim)
    wait_until(f"{victim} back in service",
               lambda: not slurm.node_states()[victim] & _DEAD, timeout_s=180)
