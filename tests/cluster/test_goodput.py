"""The goodput report on the real cluster: a training job that is preempted by an
owner's inference and then loses a node. ``slurmkit goodput`` must count its runs and
interruptions as sacct does, and its lost-work and restart figures must match the
trainer's own log (steps exactly, seconds within 2 s)."""

from __future__ import annotations

import json
import re

from slurmkit.testing.cluster import wait_until
from slurmkit.testing.training import Training, no_trainer_left

STEPS = 80
LINE = re.compile(r"^trainer: run (\d+) (.*) t=(\d+\.\d+)$")


def trainer_log(training: Training, run: int) -> list[tuple[str, float]]:
    """Rank 0's log of one run: (text, epoch seconds) per line, in order."""
    lines = []
    for line in training.log(run).splitlines():
        match = LINE.match(line)
        if match and int(match.group(1)) == run:
            lines.append((match.group(2), float(match.group(3))))
    return lines


def logged_steps(lines: list[tuple[str, float]]) -> dict[int, float]:
    return {int(text.split()[1]): at for text, at in lines if text.startswith("step ")}


def restored_step(lines: list[tuple[str, float]]) -> int:
    restored = [int(text.split()[2]) for text, _ in lines if text.startswith("restored step ")]
    return restored[0] if restored else 0


def test_report_counts_runs_and_matches_the_trainers_log(cluster, policy_installed, jobs):
    # Periodic checkpoints only (no triggered ones): interruptions lose the steps since
    # the last periodic checkpoint, so the lost-work figures are not trivially zero.
    training = Training.submit(cluster, "goodput-story", STEPS, user="bob",
                               # The requeue path (in-place restarts: test_inplace.py).
                               submit_args=("-A", "team-b", "--restart", "requeue"),
                               trainer_args=("--no-triggered", "--periodic-steps", "15",
                                             "--step-seconds", "0.1"))
    jobs.job_ids.append(training.job_id)
    # Run 0: all four nodes, borrowed capacity. The owner's inference reclaims one node:
    # the whole job is preempted (warned, checkpointed, requeued).
    training.wait_step(23)
    owner = cluster.exec("login", [
        "sbatch", "--parsable", "--qos=inference", "-N1", "--gpus-per-node=8", "-J", "owner",
        "-o", "/dev/null", "--wrap", "sleep 20"], user="alice").stdout.strip()
    jobs.job_ids.append(int(owner))
    # Run 1 makes progress, then one of its nodes dies.
    wait_until("run 1 to make progress",
               lambda: len(logged_steps(trainer_log(training, 1))) >= 20,
               timeout_s=300, interval_s=0.5)
    victim = training.job().nodes[-1]
    cluster.crash(victim)
    try:
        wait_until(f"{victim} to be declared down", lambda: training.job().state != "RUNNING",
                   timeout_s=120, interval_s=0.5)
    finally:
        cluster.restore(victim)
    runs = training.wait_finished()
    wait_until("no trainer process left on any node", lambda: no_trainer_left(cluster),
               timeout_s=60)

    states = [run.state for run in runs]
    assert states[0] == "PREEMPTED" and "NODE_FAIL" in states and states[-1] == "COMPLETED", runs
    result = cluster.exec("login", [
        "slurmkit", "goodput", "--job", str(training.job_id), "--events", training.ckpt_dir,
        "--format", "json", "--no-progress"], user="bob")
    report = json.loads(result.stdout)
    [chain] = [c for c in report["jobs"] if c["job_id_raw"] == training.job_id]
    assert chain["runs"] == len(runs) and len(chain["run_details"]) == len(runs)
    assert chain["node_failures"] == states.count("NODE_FAIL") == 1
    assert chain["preemptions"] == states.count("PREEMPTED") == 1  # the owner's job found
    assert chain["spurious_requeues"] == 0 and chain["requeues"] == len(runs) - 1
    assert chain["final_state"] == "COMPLETED" and chain["account"] == "team-b"

    logs = [trainer_log(training, run.restarts) for run in runs]
    expected_lost_steps = 0
    for index, (run, reported) in enumerate(zip(runs, chain["run_details"], strict=True)):
        steps = logged_steps(logs[index])
        assert reported["state"] == run.state
        if index > 0:
            # Restart overhead: the run's start (sacct) to its first completed step (log).
            overhead_s = min(steps.values()) - run.start_epoch_s
            assert abs(reported["restart_overhead_s"] - overhead_s) <= 2, (index, reported)
        if index == len(runs) - 1:
            assert reported["lost_steps"] in (None, 0) and reported["lost_s"] == 0
            continue
        # Lost work: the steps after the one the next run resumed from, and the time
        # from that step's completion (log) to the run's end (sacct).
        resumed_from = restored_step(logs[index + 1])
        lost_steps = max(steps) - resumed_from
        assert reported["lost_steps"] == lost_steps, (index, reported, resumed_from)
        expected_lost_steps += lost_steps
        kept_until = steps.get(resumed_from, max(steps.values()))
        lost_s = run.end_epoch_s - kept_until
        # After a crash, the time from the last step to Slurm ending the run is detection.
        counted = reported["lost_s"] + reported["failure_detection_s"]
        assert abs(counted - lost_s) <= 2, (index, reported, lost_s)
    assert chain["lost_steps"] == expected_lost_steps > 0
    print(f"goodput: runs {states}, ETTR {chain['ettr']}, lost steps {expected_lost_steps}, "
          f"restart overheads {[r['restart_overhead_s'] for r in chain['run_details']]}")
