"""Recovering from a lost node inside the allocation, at Slurm's default timeouts.

The module runs with the cluster's "site" timeout profile (SlurmdTimeout=300,
MessageTimeout=10, KillWait=30, cred_expire=120): Slurm needs minutes to notice a dead
node there, so whatever recovers within seconds is the job's own doing
(``slurmkit.launch``: heartbeat, triggered checkpoint, next srun step on the
survivors or a spare). Every fault is injected at a step chosen by a seeded random
generator (the seed is printed), and every run must end with weights bit-for-bit
equal to a fault-free run's.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.training import (
    Training,
    no_trainer_left,
    reference_sha,
    trainer_pids,
    wait_in_place_recovery,
    wait_trained,
)

STEPS = 90
FAST = ("--step-seconds", "0.1")
#: Fault -> first resumed step (issue: "under 10 seconds, whatever Slurm's timeouts").
RESUME_BUDGET_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def site_timeouts(cluster):
    cluster.set_profile("site")
    yield
    cluster.set_profile("fast")


@pytest.fixture(scope="module")
def reference(cluster) -> str:
    return reference_sha(cluster, STEPS)


@pytest.fixture
def rng(request) -> random.Random:
    seed = int(os.environ.get("SLURMKIT_TEST_SEED", random.randrange(1 << 30)))
    print(f"{request.node.name}: seed {seed} (SLURMKIT_TEST_SEED={seed} repeats it)")
    return random.Random(seed)


def submit(cluster, jobs, name: str, *submit_args: str, trainer_args=FAST) -> Training:
    training = Training.submit(cluster, name, STEPS, trainer_args=trainer_args,
                               submit_args=submit_args)
    jobs.job_ids.append(training.job_id)
    return training


def attempt_nodes(training: Training, attempt: int) -> list[str]:
    [start] = [e for e in training.events()
               if e["event"] == "attempt-start" and e["attempt"] == attempt and e["run"] == 0]
    return start["nodes"]


def finish(cluster, training: Training, victim: str | None, reference: str):
    """Training done, the dead node back (Slurm would hold the job COMPLETING on it for
    minutes), the job finished in ONE run, with the fault-free result."""
    wait_trained(training)
    if victim:
        cluster.restore(victim)
    records = training.wait_finished(timeout_s=120)
    # One run, no requeue. Slurm writes a RESIZING record when it removes a node
    # DOWN from the --no-kill job (here: the harness setting the dead node DOWN).
    assert {r.restarts for r in records} == {0}, records
    assert [r.state for r in records if r.state != "RESIZING"] == ["COMPLETED"], records
    assert training.final_sha() == reference
    wait_until("no trainer process left", lambda: no_trainer_left(cluster), timeout_s=60)


def assert_no_step_lost(recovery) -> None:
    assert recovery.restart["checkpoint_step"] == recovery.last_step_before, recovery
    assert recovery.first_step["step"] == recovery.last_step_before + 1, recovery


def test_a_crashed_node_is_replaced_by_the_survivors_within_seconds(cluster, jobs, reference,
                                                                     rng):
    training = submit(cluster, jobs, "inplace-crash")
    training.wait_step(rng.randint(15, 45))
    nodes = attempt_nodes(training, 0)
    assert len(nodes) == 4
    victim = rng.choice(nodes[1:])  # the batch host is the requeue path's business
    fault = time.time()
    cluster.crash(victim)
    recovery = wait_in_place_recovery(training, fault)

    assert recovery.resumed_after_s <= RESUME_BUDGET_S, recovery
    assert recovery.restart["dead_nodes"] == [victim]
    assert recovery.restart["nodes"] == [node for node in nodes if node != victim]
    assert recovery.restart["ranks"] == 6
    assert_no_step_lost(recovery)
    # Slurm has not noticed yet: at its default SlurmdTimeout the node is not DOWN.
    assert "DOWN" not in cluster.node_states()[victim]
    [start] = [e for e in training.events() if e["event"] == "run-start" and e["attempt"] == 1]
    assert start["layout"]["dp"] == 6 and start["layout"]["grad_accum"] == 4  # 48 kept
    finish(cluster, training, victim, reference)

    # The goodput report: one job, one run (Slurm's resize record of the --no-kill job
    # included), its restart in place with the dead node and what it cost; no requeue.
    result = cluster.exec("login", [
        "slurmkit", "goodput", "--job", str(training.job_id), "--events", training.ckpt_dir,
        "--format", "json", "--no-progress"], user="alice")
    [chain] = [c for c in json.loads(result.stdout)["jobs"]
               if c["job_id_raw"] == training.job_id]
    assert chain["runs"] == 1 and chain["requeues"] == 0, chain
    assert chain["inplace_restarts"] == 1 and chain["final_state"] == "COMPLETED", chain
    [item] = chain["run_details"][0]["inplace_restarts"]
    restart = recovery.restart
    assert item["dead_nodes"] == [victim] and item["lost_steps"] == 0, item
    assert abs(item["failure_detection_s"]
               - (restart["detected_epoch_s"] - restart["fault_epoch_s"])) <= 0.2, item
    assert abs(item["restart_overhead_s"]
               - (restart["resumed_epoch_s"] - restart["detected_epoch_s"])) <= 0.2, item


def test_a_hot_spare_takes_the_dead_nodes_place(cluster, jobs, reference, rng, leaf_of):
    training = submit(cluster, jobs, "inplace-spare", "-N", "3", "--spares", "1")
    training.wait_step(rng.randint(15, 45))
    active = attempt_nodes(training, 0)
    [spare] = [e for e in training.events() if e["event"] == "attempt-start"][0]["spares"]
    assert len(active) == 3 and spare not in active
    victim = rng.choice(active[1:])
    fault = time.time()
    cluster.crash(victim)
    recovery = wait_in_place_recovery(training, fault)

    assert recovery.resumed_after_s <= RESUME_BUDGET_S, recovery
    assert recovery.restart["spare_used"] == spare
    assert sorted(recovery.restart["nodes"]) == sorted({*active, spare} - {victim})
    assert_no_step_lost(recovery)
    layouts = [e["layout"] for e in training.events() if e["event"] == "run-start"]
    assert len(layouts) == 2 and layouts[0] == layouts[1]  # world size and layout unchanged
    finish(cluster, training, victim, reference)


def test_a_crashed_rank_restarts_in_place_on_the_same_nodes(cluster, jobs, reference, rng):
    training = submit(cluster, jobs, "inplace-rank")
    training.wait_step(rng.randint(15, 45))
    nodes = attempt_nodes(training, 0)
    node = rng.choice(nodes)  # the batch host too: only a process dies
    pids = trainer_pids(cluster, node)
    assert len(pids) == 2
    fault = time.time()
    cluster.exec(node, ["kill", "-9", pids[0]])
    recovery = wait_in_place_recovery(training, fault)

    assert recovery.resumed_after_s <= RESUME_BUDGET_S, recovery
    assert recovery.restart["dead_nodes"] == []  # its node answers: it is kept
    assert recovery.restart["nodes"] == nodes
    assert_no_step_lost(recovery)
    # The SPANK plugin signalled the dead task's sibling on the same node at once.
    slurmd_log = cluster.exec(node, ["cat", "/var/log/slurm/slurmd.log"]).stdout
    assert f"slurmkit: task pid {pids[0]} died (signal 9); sent signal 12" in slurmd_log
    finish(cluster, training, None, reference)


def test_a_cut_off_node_is_left_behind_and_fenced(cluster, jobs, reference, rng):
    training = submit(cluster, jobs, "inplace-cut")
    training.wait_step(rng.randint(15, 45))
    nodes = attempt_nodes(training, 0)
    victim = rng.choice(nodes[1:])
    fault = time.time()
    cluster.cut(victim)
    recovery = wait_in_place_recovery(training, fault)

    assert recovery.resumed_after_s <= RESUME_BUDGET_S, recovery
    assert recovery.restart["dead_nodes"] == [victim]
    assert_no_step_lost(recovery)
    # The node comes back while the restarted attempt trains: its orphaned ranks
    # (cut off, but alive) must never write into the restarted run's checkpoints.
    cluster.restore(victim)
    wait_trained(training)
    launched = recovery.restart["launched_epoch_s"]
    from_victim = [e for e in training.events() if e.get("host") == victim]
    late_writes = [e for e in from_victim if e["event"] == "checkpoint" and e.get("committed")
                   and e["time_epoch_s"] >= launched]
    assert not late_writes, late_writes
    assert any(e["event"] in ("fenced", "checkpoint-exists", "checkpoint-by-peer")
               for e in from_victim if e.get("attempt") == 0), from_victim
    finish(cluster, training, None, reference)


def test_a_slow_rank_is_not_a_dead_one(cluster, jobs, reference, rng):
    """2 x the step time frozen (SIGSTOP), then a CPU hog on the same node: no restart.
    The detection threshold is SLURMKIT_PEER_TIMEOUT_S (1.5 s) of silence."""
    training = submit(cluster, jobs, "inplace-slow", trainer_args=("--step-seconds", "0.25"))
    training.wait_step(rng.randint(10, 20))
    node = rng.choice(attempt_nodes(training, 0)[1:])
    pid = trainer_pids(cluster, node)[0]
    for _ in range(3):
        cluster.exec(node, ["kill", "-STOP", pid])
        time.sleep(0.5)  # the fault itself: 2 x the 0.25 s step, frozen
        cluster.exec(node, ["kill", "-CONT", pid])
        training.wait_step(training.last_step() + 2)
    hog = ["timeout", "10", "sh", "-c", "while :; do :; done"]
    for _ in range(2):  # both of the node's CPUs
        cluster.exec(node, ["setsid", "-f", *hog], user="alice")
    training.wait_step(training.last_step() + 20, timeout_s=120)

    events = training.events()
    assert not [e for e in events if e["event"] in ("peer-lost", "restart", "trigger")], \
        [e for e in events if e["event"] in ("peer-lost", "restart", "trigger")]
    finish(cluster, training, None, reference)
