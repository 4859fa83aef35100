"""Surviving node loss on the real cluster: triggered checkpoints by the survivors,
requeue, restart on fewer nodes with a re-planned layout, bitwise-equal results."""

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

STEPS = 100
# Faster steps than the trainer's default 0.25 s: the scenario is the same, the test shorter.
FAST = ("--step-seconds", "0.1")


@pytest.fixture(scope="module")
def reference(cluster) -> str:
    return reference_sha(cluster, STEPS)


def test_node_crash_resumes_on_three_nodes_from_the_last_completed_step(cluster, jobs,
                                                                         reference):
    training = Training.submit(cluster, "survive-crash", STEPS, trainer_args=FAST)
    jobs.job_ids.append(training.job_id)
    randomness = random.Random()
    crash_step = randomness.randint(20, 60)
    training.wait_step(crash_step)
    running = jobs.job(training.job_id)
    assert len(running.nodes) == 4
    victim = randomness.choice(running.nodes)
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

    assert [r.state for r in runs] == ["NODE_FAIL", "COMPLETED"], runs
    assert len(runs[1].nodes) == 3 and victim not in runs[1].nodes
    events = training.events()
    triggered = [e for e in events if e["event"] == "checkpoint" and e["kind"] == "triggered"
                 and e.get("committed")]
    assert len(triggered) <= 1, triggered  # one survivor writes, the others wait for it
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


def test_a_crashed_rank_makes_its_siblings_checkpoint_through_spank(cluster, jobs, reference):
    training = Training.submit(cluster, "survive-rank", STEPS, trainer_args=FAST)
    jobs.job_ids.append(training.job_id)
    training.wait_step(30)
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
