"""Surviving node loss through Slurm's requeue, on the real cluster ("fast" timeout
profile): what in-place restarts fall back to (the batch host lost, too few nodes
left) and the plain requeue path (``restart = "requeue"``). Triggered checkpoints by
the survivors, restart on fewer nodes with a re-planned layout, bitwise-equal results.
In-place restarts at Slurm's default timeouts: test_inplace.py."""

from __future__ import annotations

import random

import pytest

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.training import (
    Training,
    no_trainer_left,
    reference_sha,
    survivors_save,
    trainer_pids,
)

STEPS = 60
# Faster steps than the trainer's default 0.25 s: the scenario is the same, the test shorter.
FAST = ("--step-seconds", "0.1")


@pytest.fixture(scope="module")
def reference(cluster) -> str:
    return reference_sha(cluster, STEPS)


def test_losing_the_batch_host_falls_back_to_a_requeue_on_three_nodes(cluster, jobs,
                                                                     reference):
    """The batch host (and with it the launch supervisor) dies: no restart in place is
    possible. The ranks on the other nodes hear the supervisor fall silent, write the
    triggered checkpoint, and Slurm requeues the job (NODE_FAIL) on the nodes left."""
    training = Training.submit(cluster, "survive-batch-host", STEPS, trainer_args=FAST)
    jobs.job_ids.append(training.job_id)
    randomness = random.Random()
    training.wait_step(randomness.randint(15, 40))
    running = jobs.job(training.job_id)
    assert len(running.nodes) == 4
    victim = running.batch_host or running.nodes[0]
    cluster.crash(victim)
    try:
        # The node comes back while run 1 trains: in time for the next test, too late
        # for run 1 (which must start on the three survivors).
        wait_until("run 1 to start", lambda: (job := training.job()) is None
                   or (job.restart_count >= 1 and job.state == "RUNNING"),
                   timeout_s=180, interval_s=0.5)
    finally:
        cluster.restore(victim)
    runs = training.wait_finished()

    # The survivors asked for the requeue (REQUEUED); had Slurm declared the node DOWN
    # first, it would have ended the run itself (NODE_FAIL).
    assert [r.state for r in runs if r.state != "RESIZING"] in (
        ["REQUEUED", "COMPLETED"], ["NODE_FAIL", "COMPLETED"]), runs
    assert len(runs[-1].nodes) == 3 and victim not in runs[-1].nodes
    events = training.events()
    assert not [e for e in events if e["event"] == "restart"]  # nothing restarted in place
    # The survivors heard the supervisor fall silent, found the batch host down, and
    # asked for the requeue (one request succeeds; the others find it requeued).
    requests = [e for e in events if e["event"] == "requeue-requested"]
    assert requests and {e["why"] for e in requests} == {f"the batch host {victim} is lost"}
    assert any(e["returncode"] == 0 for e in requests), requests
    saved = survivors_save(events, run=0)
    assert saved is not None, "the survivors neither wrote nor found a checkpoint"
    checkpoint_step, kept_by = saved
    last_logged = training.last_step(0)
    # The survivors saved the last completed step: nothing of run 0 is lost.
    assert checkpoint_step >= last_logged and checkpoint_step - last_logged <= 1
    [restore] = [e for e in events if e["event"] == "restore" and e["run"] == 1 and e["rank"] == 0]
    assert restore["step"] == checkpoint_step
    [start] = [e for e in events if e["event"] == "run-start" and e["run"] == 1]
    assert start["ranks"] == 6 and start["layout"]["dp"] == 6
    assert start["layout"]["grad_accum"] == 4  # 48 = 6 x 2 x 4: global batch kept
    assert f"restored step {checkpoint_step} ({kept_by})" in training.log(1)
    assert training.final_sha() == reference  # bit for bit, although the layout changed
    wait_until("no trainer process left on any node", lambda: no_trainer_left(cluster),
               timeout_s=60)


def test_too_few_nodes_left_falls_back_to_a_requeue(cluster, jobs, reference):
    """A 4-node job (no elasticity, no spare) loses a node: the supervisor cannot
    restart in place and asks for a requeue; the job finishes on 4 nodes again once
    the node is back."""
    training = Training.submit(cluster, "survive-min", STEPS, trainer_args=FAST,
                               submit_args=("-N", "4"))
    jobs.job_ids.append(training.job_id)
    training.wait_step(random.Random().randint(15, 40))
    victim = jobs.job(training.job_id).nodes[2]
    cluster.crash(victim)
    [fallback] = wait_until("the fallback", lambda: [
        e for e in training.events() if e["event"] == "restart-fallback"], timeout_s=60)
    assert "3 node(s) left, the job needs at least 4" in fallback["reason"]
    wait_until("the requeue", lambda: (job := training.job()) is not None
               and job.restart_count >= 1, timeout_s=120, interval_s=0.5)
    cluster.restore(victim)
    runs = training.wait_finished()

    assert [r.state for r in runs][-1] == "COMPLETED" and runs[-1].restarts == 1, runs
    assert len(runs[-1].nodes) == 4
    [restore] = [e for e in training.events() if e["event"] == "restore" and e["run"] == 1
                 and e["rank"] == 0]
    assert restore["step"] == fallback["checkpoint_step"] >= training.last_step(0)
    assert training.final_sha() == reference


def test_a_crashed_rank_makes_its_siblings_checkpoint_through_spank(cluster, jobs, reference):
    training = Training.submit(cluster, "survive-rank", STEPS, trainer_args=FAST,
                               submit_args=("--restart", "requeue"))
    jobs.job_ids.append(training.job_id)
    training.wait_step(20)
    running = jobs.job(training.job_id)
    node = running.nodes[1]  # not the batch host: the job script must survive to requeue
    pids = trainer_pids(cluster, node)
    assert len(pids) == 2
    cluster.exec(node, ["kill", "-9", pids[0]])
    runs = training.wait_finished()

    assert runs[0].state == "REQUEUED" and runs[-1].state == "COMPLETED", runs
    assert len(runs[-1].nodes) == 4  # the node is healthy: all four come back
    # The SPANK plugin signalled the dead task's sibling on the same node...
    slurmd_log = cluster.exec(node, ["cat", "/var/log/slurm/slurmd.log"]).stdout
    assert f"slurmkit: task pid {pids[0]} died (signal 9); sent signal 12" in slurmd_log
    assert "triggered (SIGUSR2 received)" in training.logs(0)
    # ...and the job resumed from the step it had completed.
    events = training.events()
    committed = [e for e in events if e["event"] == "checkpoint" and e["kind"] == "triggered"
                 and e.get("committed")]
    [restore] = [e for e in events if e["event"] == "restore" and e["run"] == 1 and e["rank"] == 0]
    assert restore["step"] == committed[-1]["step"] >= training.last_step(0)
    assert training.final_sha() == reference
    wait_until("no trainer process left on any node", lambda: no_trainer_left(cluster),
               timeout_s=60)


def test_sbatch_shows_the_checkpoint_options(cluster):
    help_text = cluster.exec("login", ["sbatch", "--help"], user="alice").stdout
    assert "--ckpt-dir=DIR" in help_text and "--ckpt-signal=SIG" in help_text
    result = cluster.exec("login", ["sbatch", "--ckpt-signal=USR1", "--wrap", "true"],
                          user="alice", check=False)
    assert result.returncode != 0 and "never USR1" in result.stderr
