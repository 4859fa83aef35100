"""PyTorch jobs that lose a node: DDP under torchrun, FSDP2 as plain srun tasks, both
from the training template (``slurmkit launch``: in-place restart on the survivors).

Each job runs 4 nodes x 2 ranks; a random non-batch node is crashed at a seeded
random step; the job resumes on 3 nodes (6 ranks, global batch kept by gradient
accumulation) from the survivors' triggered checkpoint, resharded to the new world
size, and finishes. Its loss trajectory is compared with a fault-free run of the same
example on 8 ranks (torchrun on the login node): bit for bit while the world size is
unchanged, within 1e-4 relative after; the final parameters within 1e-4 too.

FSDP2 holds each shard on one rank only: the survivors rebuild the lost node's shards
from the replicas their peers sent them between steps (at most one step lost); with
replication off they cannot, and the job resumes from its last periodic checkpoint,
saying so.

Losing the batch host (the launch supervisor with it) leaves only Slurm's requeue: the
DDP survivors write the triggered checkpoint, ask for the requeue, and the next run
loads it on 3 nodes, on the same trajectory.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.training import (
    TORCH_DDP,
    TORCH_FSDP,
    TORCH_PROCESS,
    TORCHRUN,
    Training,
    compare_weights,
    no_trainer_left,
    survivors_save,
    torch_reference,
    wait_in_place_recovery,
    wait_trained,
)

STEPS = 24
EVERY = 5
PERIODIC = ("--periodic-steps", str(EVERY))
#: A rank's step takes about half a second here; the fault lands between these steps,
#: two or three steps after a periodic checkpoint (see ``crash_one_node``).
FAULT_STEPS = (7, 14)
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def ddp_reference(cluster) -> tuple[str, dict]:
    return torch_reference(cluster, TORCH_DDP, STEPS)


@pytest.fixture(scope="module")
def fsdp_reference(cluster) -> tuple[str, dict]:
    return torch_reference(cluster, TORCH_FSDP, STEPS)


@pytest.fixture
def rng(request) -> random.Random:
    seed = int(os.environ.get("SLURMKIT_TEST_SEED", random.randrange(1 << 30)))
    print(f"{request.node.name}: seed {seed} (SLURMKIT_TEST_SEED={seed} repeats it)")
    return random.Random(seed)


def wait_fault_step(training: Training, rng: random.Random) -> None:
    """Until a random step in FAULT_STEPS, 2 or 3 steps after a periodic checkpoint:
    right after one the survivors would find the step they hold already saved (and
    rightly write nothing), which is not the case under test."""
    target = rng.randint(*FAULT_STEPS)
    wait_until(f"{training.name} to reach step {target} + 2 or 3 (mod {EVERY})",
               lambda: (step := training.last_step()) >= target and step % EVERY in (2, 3),
               timeout_s=400, interval_s=0.1)


def crash_one_node(cluster, jobs, rng, name: str, program, *, submit_args=(),
                   trainer_args=()):
    training = Training.submit(cluster, name, STEPS, program=program,
                               trainer_args=(*PERIODIC, *trainer_args),
                               submit_args=submit_args)
    jobs.job_ids.append(training.job_id)
    wait_fault_step(training, rng)
    [start] = [e for e in training.events() if e["event"] == "attempt-start"
               and e["attempt"] == 0 and e["run"] == 0]
    assert len(start["nodes"]) == 4, start
    victim = rng.choice(start["nodes"][1:])  # the batch host is the requeue path's
    fault = time.time()
    cluster.crash(victim)
    recovery = wait_in_place_recovery(training, fault, timeout_s=300)
    assert recovery.restart["dead_nodes"] == [victim], recovery
    assert recovery.restart["ranks"] == 6, recovery
    return training, victim, recovery


def finish(cluster, training: Training, victim: str) -> None:
    wait_trained(training, timeout_s=600)
    cluster.restore(victim)
    records = training.wait_finished(timeout_s=180)
    assert [r.state for r in records if r.state != "RESIZING"] == ["COMPLETED"], records
    wait_until("no torch rank left", lambda: no_trainer_left(cluster, TORCH_PROCESS),
               timeout_s=60)


def resumed_restore(training: Training, recovery) -> dict:
    [restore] = [e for e in training.events() if e["event"] == "restore" and e["rank"] == 0
                 and e["attempt"] == recovery.restart["attempt"]]
    return restore


def assert_trajectory(training: Training, reference: dict, resumed_from: int) -> None:
    """Every step's loss: bitwise the reference's up to ``resumed_from`` (8 ranks,
    like the reference, in the first run's first attempt), within REL_TOL after (6
    ranks, in place or requeued: sums in another order)."""
    losses = training.losses()
    assert sorted(losses) == list(range(1, STEPS + 1)), sorted(losses)
    for step, (loss, run, attempt) in losses.items():
        expected = reference[step]
        if step <= resumed_from:
            assert (run, attempt) == (0, 0) and loss == expected, (step, loss, expected)
        else:
            assert (run, attempt) != (0, 0), (step, run, attempt)
            assert abs(loss - expected) <= REL_TOL * abs(expected), (step, loss, expected)


def test_ddp_under_torchrun_resumes_on_three_nodes_on_the_fault_free_trajectory(
        cluster, jobs, ddp_reference, rng):
    reference_dir, reference = ddp_reference
    training, victim, recovery = crash_one_node(cluster, jobs, rng, "torch-ddp", TORCH_DDP,
                                                submit_args=TORCHRUN)
    restart = recovery.restart
    # DDP: every survivor holds the whole state; the newest completed step is saved.
    assert restart["checkpoint_step"] >= recovery.last_step_before, recovery
    assert recovery.first_step["step"] == restart["checkpoint_step"] + 1, recovery
    restore = resumed_restore(training, recovery)
    assert (restore["step"], restore["kind"]) == (restart["checkpoint_step"], "triggered")
    assert (restore["world_size_saved"], restore["world_size"]) == (8, 6), restore
    [start] = [e for e in training.events() if e["event"] == "run-start"
               and e["attempt"] == restart["attempt"]]
    assert start["layout"]["dp"] == 6 and start["layout"]["grad_accum"] == 4  # 48 kept
    finish(cluster, training, victim)
    assert_trajectory(training, reference, restart["checkpoint_step"])
    weights = compare_weights(cluster, training.ckpt_dir, reference_dir)
    assert weights["steps"] == [STEPS, STEPS] and weights["max_rel_diff"] <= REL_TOL, weights


def test_fsdp_survivors_rebuild_the_lost_shards_from_peer_replicas(cluster, jobs,
                                                                  fsdp_reference, rng):
    reference_dir, reference = fsdp_reference
    training, victim, recovery = crash_one_node(cluster, jobs, rng, "torch-fsdp", TORCH_FSDP)
    restart = recovery.restart
    assert restart["checkpoint_step"] is not None, recovery
    assert recovery.steps_lost <= 1, recovery  # the replicas of the lost shards
    restore = resumed_restore(training, recovery)
    assert (restore["step"], restore["kind"]) == (restart["checkpoint_step"], "triggered")
    assert (restore["world_size_saved"], restore["world_size"]) == (8, 6), restore
    # The survivors wrote the dead node's two shards from their replicas.
    written = [part for e in training.events() if e["event"] in ("checkpoint",
               "checkpoint-by-peer") and e.get("kind") == "triggered"
               for part in e.get("written", [])]
    dead_ranks = restart["lost_ranks"]
    assert {f"r{rank:05d}@{restart['checkpoint_step']}" for rank in dead_ranks} <= \
        set(written), (written, dead_ranks)
    finish(cluster, training, victim)
    assert_trajectory(training, reference, restart["checkpoint_step"])
    weights = compare_weights(cluster, training.ckpt_dir, reference_dir)
    assert weights["max_rel_diff"] <= REL_TOL, weights


def test_fsdp_without_replicas_falls_back_to_the_periodic_checkpoint_and_says_so(
        cluster, jobs, fsdp_reference, rng):
    reference_dir, reference = fsdp_reference
    training, victim, recovery = crash_one_node(cluster, jobs, rng, "torch-fsdp-norepl",
                                                TORCH_FSDP, trainer_args=("--no-replication",))
    events = training.events()
    incomplete = [e for e in events if e["event"] == "checkpoint-incomplete"
                  and e.get("attempt") == 0]
    assert incomplete, "the survivors did not report their incomplete checkpoint"
    dead_shards = {f"r{rank:05d}" for rank in recovery.restart["lost_ranks"]}
    assert all(dead_shards <= set(missing) for e in incomplete
               for missing in e["missing"].values()), incomplete
    periodic = max(e["step"] for e in events if e["event"] == "checkpoint"
                   and e.get("kind") == "periodic" and e.get("committed") and e["attempt"] == 0)
    restore = resumed_restore(training, recovery)
    assert (restore["step"], restore["kind"]) == (periodic, "periodic"), restore
    assert restore["incomplete"] and set(restore["incomplete"][0]["missing"]) >= dead_shards
    # Said in the resumed attempt's log, too.
    assert f"restored step {periodic} (periodic, 8 ranks -> 6)" in training.logs(0)
    assert "incomplete: " in training.logs(0) and "missing" in training.logs(0)
    assert recovery.first_step["step"] == periodic + 1, recovery
    finish(cluster, training, victim)
    assert_trajectory(training, reference, periodic)
    weights = compare_weights(cluster, training.ckpt_dir, reference_dir)
    assert weights["max_rel_diff"] <= REL_TOL, weights


def test_ddp_losing_the_batch_host_resumes_by_requeue_on_three_nodes(cluster, jobs,
                                                                    ddp_reference, rng):
    """The requeue path with PyTorch state: the batch host dies, the survivors on the
    other nodes write the triggered checkpoint of the last completed step and ask for
    the requeue; run 1 loads it on 6 ranks and finishes on the fault-free trajectory."""
    reference_dir, reference = ddp_reference
    training = Training.submit(cluster, "torch-ddp-requeue", STEPS, program=TORCH_DDP,
                               trainer_args=PERIODIC, submit_args=TORCHRUN)
    jobs.job_ids.append(training.job_id)
    wait_fault_step(training, rng)
    running = training.job()
    assert running is not None and len(running.nodes) == 4, running
    victim = running.batch_host or running.nodes[0]
    cluster.crash(victim)
    try:
        wait_until("run 1 to start", lambda: (job := training.job()) is None
                   or (job.restart_count >= 1 and job.state == "RUNNING"),
                   timeout_s=240, interval_s=0.5)
    finally:
        cluster.restore(victim)
    records = training.wait_finished(timeout_s=600)
    assert [r.state for r in records if r.state != "RESIZING"] in (
        ["REQUEUED", "COMPLETED"], ["NODE_FAIL", "COMPLETED"]), records
    assert len(records[-1].nodes) == 3 and victim not in records[-1].nodes, records
    events = training.events()
    assert not [e for e in events if e["event"] == "restart"]  # nothing restarted in place
    requests = [e for e in events if e["event"] == "requeue-requested"]
    assert requests and {e["why"] for e in requests} == {f"the batch host {victim} is lost"}
    saved = survivors_save(events, run=0)
    assert saved is not None, "the survivors neither wrote nor found a checkpoint"
    checkpoint_step, _kept_by = saved
    assert checkpoint_step >= training.last_step(0), (checkpoint_step, training.last_step(0))
    [restore] = [e for e in events if e["event"] == "restore" and e["run"] == 1
                 and e["rank"] == 0]
    assert restore["step"] == checkpoint_step, restore
    assert (restore["world_size_saved"], restore["world_size"]) == (8, 6), restore
    [start] = [e for e in events if e["event"] == "run-start" and e["run"] == 1]
    assert start["layout"]["dp"] == 6 and start["layout"]["grad_accum"] == 4  # 48 kept
    wait_until("no torch rank left", lambda: no_trainer_left(cluster, TORCH_PROCESS),
               timeout_s=60)
    assert_trajectory(training, reference, checkpoint_step)
    weights = compare_weights(cluster, training.ckpt_dir, reference_dir)
    assert weights["steps"] == [STEPS, STEPS] and weights["max_rel_diff"] <= REL_TOL, weights
