"""``make campaign``: a randomized fault campaign against the example trainer.

Each fault runs one training job on the docker-slurm cluster and injects one failure
at a random step: a node crash, a rank crash, a network cut, a crash while a
checkpoint is being written, or a controller restart while the job waits in the queue
after a requeue. Every job must complete with final weights equal to a fault-free run
and no corrupt checkpoint. Measured per fault: lost work (steps completed before the
fault and not restored) and the recovery time from the fault to the first resumed
step, broken down into detection, requeue, start and restore. A baseline set of node
crashes with periodic checkpoints only (no triggered checkpoint) is measured in the
same campaign. At the end: a table, the expected-ETTR projection for a 10,000-GPU job
(Kokolis et al., HPCA 2025) from these figures, and one JSON line.

    python -m slurmkit.testing.campaign [--faults 20] [--baseline 5] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from slurmkit import output
from slurmkit.testing.cluster import Cluster, exclusive_use, wait_until
from slurmkit.testing.training import (
    Training,
    no_trainer_left,
    reference_sha,
    trainer_pids,
)

STEPS = 160
PERIODIC_STEPS = 20
STEP_SECONDS = 0.25
KINDS = ("node-crash", "rank-crash", "network-cut", "crash-during-write", "ctl-restart-in-requeue")


@dataclass
class FaultResult:
    index: int
    kind: str
    triggered: bool
    job_id: int
    fault_step: int
    completed: bool = False
    weights_equal: bool = False
    checkpoints_valid: bool = False
    interrupted: bool = False  # the fault really ended a run (a fault that missed proves nothing)
    restored_kind: str | None = None
    lost_steps: int | None = None
    detection_s: float | None = None
    requeue_s: float | None = None
    start_s: float | None = None
    restore_s: float | None = None
    recovery_s: float | None = None
    runs: list[str] = field(default_factory=list)
    note: str = ""
    periodic_stall_s: float | None = None


def log(text: str) -> None:
    print(f"[campaign] {text}", file=sys.stderr, flush=True)


def verify_checkpoints(cluster: Cluster, training: Training) -> bool:
    """Every committed checkpoint in the job's directory verifies byte for byte."""
    script = ("import sys\nfrom slurmkit.ckpt import store\n"
              f"steps = store.committed_steps({training.ckpt_dir!r})\n"
              "for step, path in steps:\n"
              f"    store.restore({training.ckpt_dir!r}, step=step)\n"
              "print(len(steps))\n")
    result = cluster.exec("login", ["python3", "-c", script], check=False)
    return result.returncode == 0 and int(result.stdout.strip() or 0) > 0


def inject(cluster: Cluster, training: Training, kind: str, randomness: random.Random
           ) -> tuple[float, list[str]]:
    """Inject the fault; returns (time of the fault, nodes to restore afterwards)."""
    job = training.job()
    nodes = list(job.nodes)
    if kind == "node-crash":
        victim = randomness.choice(nodes)
        cluster.crash(victim)
        return time.time(), [victim]
    if kind == "rank-crash":
        victim = randomness.choice(nodes)
        pids = trainer_pids(cluster, victim)
        if pids:  # none: the fault misses, and the result says so (not interrupted)
            cluster.exec(victim, ["kill", "-9", randomness.choice(pids)])
        else:
            log(f"no trainer process on {victim} to crash")
        return time.time(), []
    if kind == "network-cut":
        victim = randomness.choice(nodes[1:])  # the batch host cut off is a node crash too
        cluster.cut(victim)
        return time.time(), [victim]
    if kind == "crash-during-write":
        # Rank 0 (first node) writes the periodic checkpoints: crash it mid-write.
        wait_until("a periodic checkpoint write in progress", lambda: cluster.exec(
            "login", ["bash", "-c", f"ls -d {training.ckpt_dir}/.tmp-step-* 2>/dev/null"],
            check=False).stdout.strip(), timeout_s=120, interval_s=0.05)
        cluster.crash(nodes[0])
        return time.time(), [nodes[0]]
    if kind == "ctl-restart-in-requeue":
        victim = randomness.choice(nodes)
        cluster.crash(victim)
        fault_at = time.time()
        wait_until("the job to be requeued", lambda: (job := training.job()) is not None
                   and job.state == "PENDING" and job.restart_count >= 1, timeout_s=180)
        cluster._docker().containers.get(cluster.container("ctl")).restart(timeout=10)
        cluster.wait_healthy(["ctl"], timeout_s=180)
        return fault_at, [victim]
    raise ValueError(kind)


def run_fault(cluster: Cluster, index: int, kind: str, triggered: bool, reference: str,
              randomness: random.Random) -> FaultResult:
    name = f"campaign-{index:02d}"
    trainer_args = ["--step-seconds", str(STEP_SECONDS), "--periodic-steps", str(PERIODIC_STEPS)]
    if not triggered:
        trainer_args.append("--no-triggered")
    if kind == "crash-during-write":
        trainer_args += ["--state-mb", "256"]
    training = Training.submit(cluster, name, STEPS, trainer_args=tuple(trainer_args))
    fault_step = randomness.randint(25, 110)
    result = FaultResult(index, kind, triggered, training.job_id, fault_step)
    training.wait_step(fault_step)
    fault_at, to_restore = inject(cluster, training, kind, randomness)
    before_fault = training.last_step(0)
    try:
        runs = training.wait_finished(timeout_s=900)
    except Exception as error:
        result.note = f"did not finish: {error}"
        training.cancel()
        for node in to_restore:
            cluster.restore(node)
        return result
    for node in to_restore:
        cluster.restore(node)
    result.runs = [f"{r.restarts}:{r.state}" for r in runs]
    result.completed = runs[-1].state == "COMPLETED"
    result.interrupted = sum(1 for run in runs if run.start_epoch_s) >= 2
    if not result.interrupted:
        result.note = "the fault did not interrupt the job"
    result.weights_equal = training.final_sha() == reference
    result.checkpoints_valid = verify_checkpoints(cluster, training)
    events = training.events()
    stalls = [e["stall_s"] for e in events if e["event"] == "checkpoint"
              and e.get("kind") == "periodic" and "stall_s" in e]
    result.periodic_stall_s = statistics.median(stalls) if stalls else None
    restores = [e for e in events if e["event"] == "restore" and e["rank"] == 0 and e["run"] >= 1]
    # By restart count, among the runs that started: a slurmctld restart while the job
    # is pending can leave a stale never-started record of the same run behind.
    started = {run.restarts: run for run in runs if run.start_epoch_s}
    next_run = restores[0]["run"] if restores else None
    if next_run is not None and next_run - 1 in started and next_run in started:
        failed, resumed = started[next_run - 1], started[next_run]
        restored_step = restores[0]["step"]
        manifests = [e for e in events if e["event"] == "checkpoint" and e["step"] == restored_step]
        result.restored_kind = manifests[0]["kind"] if manifests else None
        result.lost_steps = max(0, before_fault - restored_step)
        first_step = min((e["time_epoch_s"] for e in events
                          if e["event"] == "step" and e["run"] == next_run), default=None)
        if failed.end_epoch_s:
            result.detection_s = round(failed.end_epoch_s - fault_at, 1)
        if resumed.eligible_epoch_s and failed.end_epoch_s:
            result.requeue_s = round(resumed.eligible_epoch_s - failed.end_epoch_s, 1)
        if resumed.start_epoch_s and resumed.eligible_epoch_s:
            result.start_s = round(resumed.start_epoch_s - resumed.eligible_epoch_s, 1)
        if first_step and resumed.start_epoch_s:
            result.restore_s = round(first_step - resumed.start_epoch_s, 1)
        if first_step:
            result.recovery_s = round(first_step - fault_at, 1)
    wait_until("no trainer left", lambda: no_trainer_left(cluster), timeout_s=120)
    return result


def passed_fault(result: FaultResult) -> bool:
    return (result.interrupted and result.completed and result.weights_equal
            and result.checkpoints_valid)


def projected_ettr(recovery_s: float, lost_s: float, stall_s: float) -> dict:
    """E[ETTR] ~ (1 - N r_f (u0 + lost)) / (1 + w / dt) for a 10,000-GPU job:
    N = 1250 nodes of 8 GPUs, r_f = 6.5 failures per 1000 node-days (the higher rate
    of Kokolis et al.), w = checkpoint stall, dt = the Young/Daly interval sqrt(2 w MTTF)."""
    nodes, rate_per_day = 1250, 6.5 / 1000
    day = 86400.0
    mttf_s = day / (nodes * rate_per_day)
    interval_s = math.sqrt(2 * max(stall_s, 1e-3) * mttf_s)
    u0 = recovery_s / day
    def ettr(lost: float) -> float:
        return (1 - nodes * rate_per_day * (u0 + lost / day)) / (1 + stall_s / interval_s)
    return {"nodes": nodes, "failures_per_node_day": rate_per_day, "mttf_h": round(mttf_s / 3600, 2),
            "checkpoint_interval_s": round(interval_s, 1), "restart_overhead_s": recovery_s,
            "ettr_triggered": round(ettr(lost_s), 4),
            "ettr_periodic_only": round(ettr(interval_s / 2), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurmkit.testing.campaign")
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--baseline", type=int, default=5,
                        help="extra node crashes with periodic checkpoints only")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    log(f"seed {seed}")
    cluster = Cluster()
    with exclusive_use("the fault campaign"):
        return run_campaign(cluster, args.faults, args.baseline, seed)


def run_campaign(cluster: Cluster, faults: int, baseline: int, seed: int) -> int:
    randomness = random.Random(seed)
    cluster.up()
    cluster.cancel_test_jobs()
    cluster.reset_policy()
    cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/ckpt", "/shared/logs"])
    reference = reference_sha(cluster, STEPS)
    kinds = [KINDS[i % len(KINDS)] for i in range(faults)]
    randomness.shuffle(kinds)
    plan = [(kind, True) for kind in kinds] + [("node-crash", False)] * baseline
    results: list[FaultResult] = []
    for index, (kind, triggered) in enumerate(plan):
        log(f"fault {index + 1}/{len(plan)}: {kind}"
            + ("" if triggered else " (periodic checkpoints only)"))
        result = run_fault(cluster, index, kind, triggered, reference, randomness)
        log(json.dumps(asdict(result)))
        results.append(result)

    rows = [(r.index, r.kind, "triggered" if r.triggered else "periodic", r.fault_step,
             "yes" if passed_fault(r) else "NO",
             r.lost_steps, r.restored_kind, r.detection_s, r.requeue_s, r.start_s, r.restore_s,
             r.recovery_s) for r in results]
    print(output.table(["#", "FAULT", "CHECKPOINTS", "AT_STEP", "OK", "LOST_STEPS", "RESTORED",
                        "DETECT_S", "REQUEUE_S", "START_S", "RESTORE_S", "RECOVERY_S"], rows))
    triggered = [r for r in results if r.triggered]
    periodic = [r for r in results if not r.triggered]
    ok = [r for r in triggered if passed_fault(r)]

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    recovery = median(r.recovery_s for r in triggered)
    summary = {
        "faults": len(triggered), "complete": len(ok),
        "no_corrupt_checkpoint": all(r.checkpoints_valid for r in results),
        "max_lost_steps_triggered": max((r.lost_steps or 0) for r in triggered) if triggered else None,
        "mean_lost_steps_periodic": round(statistics.mean(r.lost_steps for r in periodic
                                                          if r.lost_steps is not None), 2)
        if periodic else None,
        "periodic_interval_steps": PERIODIC_STEPS,
        "median_recovery_s": recovery,
        "median_detection_s": median(r.detection_s for r in triggered),
        "median_requeue_s": median(r.requeue_s for r in triggered),
        "median_start_s": median(r.start_s for r in triggered),
        "median_restore_s": median(r.restore_s for r in triggered),
        "seed": seed,
    }
    stall = median(r.periodic_stall_s for r in results)
    summary["median_periodic_stall_s"] = stall
    if recovery is not None:
        summary["projection_10k_gpus"] = projected_ettr(
            recovery, (summary["max_lost_steps_triggered"] or 0) * STEP_SECONDS, stall or 0.01)
    print(json.dumps(summary))
    passed = (summary["complete"] == summary["faults"] and summary["no_corrupt_checkpoint"]
              and (summary["max_lost_steps_triggered"] or 0) <= 1
              and recovery is not None and recovery <= 90)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
