"""``make campaign``: a randomized fault campaign against the example trainer, at
Slurm's default timeouts (the cluster's "site" profile: SlurmdTimeout=300,
MessageTimeout=10, KillWait=30, cred_expire=120).

Each fault runs one training job on the docker-slurm cluster and injects one failure
at a random step. In-place faults (the job restarts inside its allocation through
``slurmkit launch``):

- ``node-crash``: a non-batch node dies (docker kill);
- ``node-crash-spare``: the same for a job holding a hot spare (3 nodes + 1 spare);
- ``rank-crash``: one trainer process is killed, its node stays up;
- ``network-cut``: a non-batch node is cut off the network (its ranks live on);
- ``writer-crash-during-write``: the rank writing a periodic checkpoint (rank 0,
  256 MB of state) is killed in the middle of the write;
- ``ctl-restart-during-recovery``: a node dies and slurmctld restarts right after,
  while the job starts its next step.

Plus a baseline of node crashes with ``restart = "requeue"`` (Slurm's own path:
detection after SlurmdTimeout, requeue, cred_expire) in the same campaign. Every job
must complete with final weights equal to a fault-free run and no corrupt checkpoint.
Measured per fault: the steps lost and the time from the fault to the first resumed
step, broken down (in place: detection, checkpoint, launch, start; requeue: detection,
requeue wait, start, restore). At the end: a table, the expected ETTR those figures
project for a 10,000-GPU job (Kokolis et al., HPCA 2025), and one JSON line.

    python -m slurmkit.testing.campaign [--faults 20] [--baseline 1] [--seed N]
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
    rank_pid,
    reference_sha,
    trainer_pids,
    wait_in_place_recovery,
    wait_trained,
)

STEPS = 160
PERIODIC_STEPS = 20
STEP_SECONDS = 0.25
INPLACE_KINDS = ("node-crash", "node-crash-spare", "rank-crash", "network-cut",
                 "writer-crash-during-write", "ctl-restart-during-recovery")
#: In-place: fault -> first resumed step (issue: under 10 s whatever Slurm's timeouts).
INPLACE_BUDGET_S = 10.0


@dataclass
class FaultResult:
    index: int
    kind: str
    mode: str  # "in-place" | "requeue"
    job_id: int
    fault_step: int
    victim: str = ""
    completed: bool = False
    weights_equal: bool = False
    checkpoints_valid: bool = False
    recovered: bool = False  # the fault was recovered from the way its mode says
    lost_steps: int | None = None
    restored_kind: str | None = None
    detection_s: float | None = None
    checkpoint_s: float | None = None  # in place: detection -> survivors' checkpoint
    launch_s: float | None = None  # in place: checkpoint -> next step launched
    requeue_s: float | None = None  # requeue: run end -> eligible again
    start_s: float | None = None  # launch or eligible -> the run's start
    restore_s: float | None = None  # start -> first resumed step
    recovery_s: float | None = None  # fault -> first resumed step
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


def attempt_start(training: Training, attempt: int = 0) -> dict:
    return wait_until(f"{training.name} attempt {attempt} to start", lambda: next(
        (e for e in training.events() if e["event"] == "attempt-start"
         and e["attempt"] == attempt and e["run"] == 0), None), timeout_s=120)


def inject(cluster: Cluster, training: Training, kind: str, randomness: random.Random
           ) -> tuple[float, str, list[str]]:
    """Inject the fault: (its time, the victim, nodes to restore afterwards)."""
    nodes = attempt_start(training)["nodes"] if kind != "requeue-node-crash" \
        else list(training.job().nodes)
    batch_host = nodes[0]
    if kind in ("node-crash", "node-crash-spare", "requeue-node-crash"):
        victim = randomness.choice(nodes[1:])  # the batch host is the requeue path's
        cluster.crash(victim)
        return time.time(), victim, [victim]
    if kind == "rank-crash":
        victim = randomness.choice(nodes)
        pid = randomness.choice(trainer_pids(cluster, victim))
        cluster.exec(victim, ["kill", "-9", pid])
        return time.time(), victim, []
    if kind == "network-cut":
        victim = randomness.choice(nodes[1:])
        cluster.cut(victim)
        return time.time(), victim, [victim]
    if kind == "writer-crash-during-write":
        # Rank 0 writes the periodic checkpoints (256 MB here): kill it mid-write.
        pid = rank_pid(cluster, batch_host, 0)
        wait_until("a periodic checkpoint write in progress", lambda: cluster.exec(
            "login", ["bash", "-c", f"ls -d {training.ckpt_dir}/.tmp-step-* 2>/dev/null"],
            check=False).stdout.strip(), timeout_s=120, interval_s=0.05)
        cluster.exec(batch_host, ["kill", "-9", pid])
        return time.time(), batch_host, []
    if kind == "ctl-restart-during-recovery":
        victim = randomness.choice(nodes[1:])
        cluster.crash(victim)
        fault_at = time.time()
        cluster._docker().containers.get(cluster.container("ctl")).restart(timeout=10)
        return fault_at, victim, [victim]
    raise ValueError(kind)


def run_fault(cluster: Cluster, index: int, kind: str, reference: str,
              randomness: random.Random) -> FaultResult:
    name = f"campaign-{index:02d}"
    mode = "requeue" if kind == "requeue-node-crash" else "in-place"
    trainer_args = ["--step-seconds", str(STEP_SECONDS), "--periodic-steps", str(PERIODIC_STEPS)]
    submit_args: list[str] = ["--restart", mode]
    if kind == "writer-crash-during-write":
        trainer_args += ["--state-mb", "256"]
    if kind == "node-crash-spare":
        submit_args += ["-N", "3", "--spares", "1"]
    training = Training.submit(cluster, name, STEPS, trainer_args=tuple(trainer_args),
                               submit_args=tuple(submit_args))
    fault_step = randomness.randint(25, 110)
    result = FaultResult(index, kind, mode, training.job_id, fault_step)
    training.wait_step(fault_step)
    fault_at, result.victim, to_restore = inject(cluster, training, kind, randomness)
    try:
        if mode == "in-place":
            measure_in_place(training, fault_at, result)
            wait_trained(training, timeout_s=600)
            for node in to_restore:
                cluster.restore(node)
        else:
            # Slurm notices the dead node after SlurmdTimeout: leave it dead until then.
            wait_until("run 1 to start", lambda: (job := training.job()) is None
                       or job.restart_count >= 1 and job.state == "RUNNING",
                       timeout_s=900, interval_s=1.0)
            for node in to_restore:
                cluster.restore(node)
        records = training.wait_finished(timeout_s=900)
    except Exception as error:  # noqa: BLE001 - the campaign reports, and goes on
        result.note = f"did not finish: {error}"
        training.cancel()
        for node in to_restore:
            cluster.restore(node)
        return result
    result.runs = [f"{r.restarts}:{r.state}" for r in records]
    result.completed = records[-1].state == "COMPLETED"
    result.weights_equal = training.final_sha() == reference
    result.checkpoints_valid = verify_checkpoints(cluster, training)
    events = training.events()
    stalls = [e["stall_s"] for e in events if e["event"] == "checkpoint"
              and e.get("kind") == "periodic" and "stall_s" in e]
    result.periodic_stall_s = statistics.median(stalls) if stalls else None
    if mode == "requeue":
        measure_requeue(training, records, events, fault_at, result)
    wait_until("no trainer left", lambda: no_trainer_left(cluster), timeout_s=120)
    return result


def measure_in_place(training: Training, fault_at: float, result: FaultResult) -> None:
    recovery = wait_in_place_recovery(training, fault_at, timeout_s=300)
    restart = recovery.restart
    result.recovered = True
    result.lost_steps = recovery.steps_lost
    result.recovery_s = round(recovery.resumed_after_s, 2)
    result.detection_s = round(restart["detected_epoch_s"] - fault_at, 2)
    result.checkpoint_s = round(restart["checkpoint_epoch_s"] - restart["detected_epoch_s"], 2)
    result.launch_s = round(restart["launched_epoch_s"] - restart["checkpoint_epoch_s"], 2)
    result.restore_s = round(recovery.first_step["time_epoch_s"] - restart["launched_epoch_s"], 2)
    kinds = {e["step"]: e["kind"] for e in training.events()
             if e["event"] == "checkpoint" and e.get("committed")}
    result.restored_kind = kinds.get(restart["checkpoint_step"])


def measure_requeue(training: Training, records, events, fault_at: float,
                    result: FaultResult) -> None:
    restores = [e for e in events if e["event"] == "restore" and e["rank"] == 0 and e["run"] >= 1]
    started = {run.restarts: run for run in records if run.start_epoch_s}
    if not restores or 0 not in started or 1 not in started:
        result.note = "no requeued run was found"
        return
    failed, resumed = started[0], started[1]
    result.recovered = True
    restored_step = restores[0]["step"]
    before = max((e["step"] for e in events if e["event"] == "step" and e["run"] == 0),
                 default=0)
    result.lost_steps = max(0, before - restored_step)
    kinds = {e["step"]: e["kind"] for e in events if e["event"] == "checkpoint"
             and e.get("committed")}
    result.restored_kind = kinds.get(restored_step)
    first_step = min((e["time_epoch_s"] for e in events if e["event"] == "step"
                      and e["run"] == 1), default=None)
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


def passed_fault(result: FaultResult) -> bool:
    return (result.recovered and result.completed and result.weights_equal
            and result.checkpoints_valid and (result.lost_steps or 0) <= 1)


def projected_ettr(recovery_s: float, lost_s: float, stall_s: float) -> dict:
    """E[ETTR] ~ (1 - N r_f (u0 + lost)) / (1 + w / dt) for a 10,000-GPU job:
    N = 1250 nodes of 8 GPUs, r_f = 6.5 failures per 1000 node-days (the higher rate
    of Kokolis et al.), u0 = the recovery time (fault -> first resumed step), w = the
    checkpoint stall, dt = the Young/Daly interval sqrt(2 w MTTF)."""
    nodes, rate_per_day = 1250, 6.5 / 1000
    day = 86400.0
    mttf_s = day / (nodes * rate_per_day)
    interval_s = math.sqrt(2 * max(stall_s, 1e-3) * mttf_s)
    ettr = (1 - nodes * rate_per_day * (recovery_s + lost_s) / day) / (1 + stall_s / interval_s)
    return {"nodes": nodes, "failures_per_node_day": rate_per_day,
            "mttf_h": round(mttf_s / 3600, 2), "checkpoint_interval_s": round(interval_s, 1),
            "recovery_s": recovery_s, "ettr": round(ettr, 4)}


def median(values) -> float | None:
    values = [value for value in values if value is not None]
    return round(statistics.median(values), 2) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurmkit.testing.campaign")
    parser.add_argument("--faults", type=int, default=20, help="in-place faults")
    parser.add_argument("--baseline", type=int, default=1,
                        help="node crashes on the requeue path (about 8 minutes each at "
                             "Slurm's default timeouts)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--profile", choices=("site", "fast"), default="site",
                        help="Slurm's timeouts: site (defaults, as real sites run) or fast")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    log(f"seed {seed}")
    cluster = Cluster()
    with exclusive_use("the fault campaign"):
        summary = run_campaign(cluster, args.faults, args.baseline, seed, args.profile)
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


def run_campaign(cluster: Cluster, faults: int, baseline: int, seed: int,
                 profile: str = "site") -> dict:
    randomness = random.Random(seed)
    cluster.up()
    cluster.cancel_test_jobs()
    cluster.reset_policy()
    cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/ckpt", "/shared/logs"])
    cluster.set_profile(profile)
    try:
        slurmd_timeout_s = int(cluster.slurm_config()["SlurmdTimeout"].split()[0])
        reference = reference_sha(cluster, STEPS)
        kinds = [INPLACE_KINDS[i % len(INPLACE_KINDS)] for i in range(faults)]
        randomness.shuffle(kinds)
        plan = kinds + ["requeue-node-crash"] * baseline
        results: list[FaultResult] = []
        for index, kind in enumerate(plan):
            log(f"fault {index + 1}/{len(plan)}: {kind}")
            result = run_fault(cluster, index, kind, reference, randomness)
            log(json.dumps(asdict(result)))
            results.append(result)
    finally:
        cluster.set_profile("fast")
    rows = [(r.index, r.kind, r.mode, r.victim, r.fault_step, "yes" if passed_fault(r) else "NO",
             r.lost_steps, r.restored_kind, r.detection_s, r.checkpoint_s, r.launch_s,
             r.requeue_s, r.start_s, r.restore_s, r.recovery_s) for r in results]
    print(output.table(["#", "FAULT", "MODE", "NODE", "AT_STEP", "OK", "LOST_STEPS", "RESTORED",
                        "DETECT_S", "CKPT_S", "LAUNCH_S", "REQUEUE_S", "START_S", "RESTORE_S",
                        "RECOVERY_S"], rows))
    return summarize(results, seed, slurmd_timeout_s)


def summarize(results: list[FaultResult], seed: int, slurmd_timeout_s: int) -> dict:
    inplace = [r for r in results if r.mode == "in-place"]
    requeue = [r for r in results if r.mode == "requeue"]
    stall = median(r.periodic_stall_s for r in results) or 0.01
    summary = {
        "slurmd_timeout_s": slurmd_timeout_s,
        "faults": len(inplace), "complete": sum(passed_fault(r) for r in inplace),
        "kinds": sorted({r.kind for r in inplace}),
        "requeue_faults": len(requeue), "requeue_complete": sum(passed_fault(r) for r in requeue),
        "no_corrupt_checkpoint": all(r.checkpoints_valid for r in results),
        "steps_lost_max": max((r.lost_steps or 0 for r in results), default=None),
        "inplace_median_s": median(r.recovery_s for r in inplace),
        "inplace_max_s": max((r.recovery_s for r in inplace if r.recovery_s is not None),
                             default=None),
        "inplace_median_detection_s": median(r.detection_s for r in inplace),
        "inplace_median_checkpoint_s": median(r.checkpoint_s for r in inplace),
        "inplace_median_launch_s": median(r.launch_s for r in inplace),
        "inplace_median_restore_s": median(r.restore_s for r in inplace),
        "requeue_median_s": median(r.recovery_s for r in requeue),
        "requeue_median_detection_s": median(r.detection_s for r in requeue),
        "requeue_median_wait_s": median(r.requeue_s for r in requeue),
        "median_periodic_stall_s": stall,
        "seed": seed,
    }
    for key, recovery in (("inplace", summary["inplace_median_s"]),
                          ("requeue", summary["requeue_median_s"])):
        if recovery is not None:
            summary[f"ettr_10k_gpus_{key}"] = projected_ettr(
                recovery, (summary["steps_lost_max"] or 0) * STEP_SECONDS, stall)
    summary["passed"] = bool(
        summary["complete"] == summary["faults"] > 0
        and summary["requeue_complete"] == summary["requeue_faults"]
        and summary["no_corrupt_checkpoint"] and (summary["steps_lost_max"] or 0) <= 1
        and summary["inplace_median_s"] is not None
        and summary["inplace_median_s"] <= INPLACE_BUDGET_S)
    return summary


if __name__ == "__main__":
    sys.exit(main())
