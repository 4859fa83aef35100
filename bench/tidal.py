"""Tidal co-location on the docker-slurm cluster: an inference service that scales with
a compressed day of traffic, and training that fills the trough. The day runs twice:

- **mixed**: training (bob, queue team-b: 8 GPUs guaranteed, may borrow 24) borrows
  whatever inference (alice, queue team-a: 24 GPUs guaranteed, its peak) does not use;
  inference scales with the tide inside its guarantee and reclaims borrowed nodes by
  preemption (the trainer writes a triggered checkpoint and is requeued);
- **static split**: the same jobs, but training may not borrow (``-p guar-team-b``):
  the cluster is split once, inference scales inside its 3 nodes, training keeps 1, and
  the trough's idle inference nodes stay idle.

Both days: the example model server (100 ms a request, 2 at a time: 20 requests/s a
replica), ``replicas = "1-3"`` of 8 GPUs, scaled on the request rate (10/s a replica);
an open-loop load on the login node (trough 6/s for 45 %% of the day, ramp to 28/s in
15 %%, peak 20 %%, ramp back 20 %%); four one-node runs of the example trainer (two ranks,
triggered checkpoints). The cluster has 4 nodes x 8 GPUs.

Measured in the day's window: utilisation = GPU-seconds allocated to running jobs (sacct,
every run) / (32 GPUs x the day), per class; the ideal = inference demand + all the
training that was waiting (squeue samples), capped at capacity; SLO attainment =
requests answered 2xx within 500 ms / requests sent; scale-up = the scaler's decision to
the new replica serving (waiting in Slurm's queue -- for a preempted job's grace time
when reclaiming --, starting, readiness); training steps = net progress of the trainers
in the window; steps lost per preemption = last step of a preempted run minus the step
the next run restored. The goodput HTML report of each day (GPU use by class over the
day) is written to reports/.

Goals (issue 14): utilisation_gain >= 1.25, mixed >= 0.95 x ideal, SLO attainment >= 0.99
in both modes, steps lost per preemption <= 1. About 14 minutes (BENCH_DAY_S, default
300 s a day). Needs the cluster (`make cluster-up`); not part of `make test`.

Final line: {"mixed_utilisation", "static_utilisation", "utilisation_gain",
"slo_attainment_mixed", "slo_attainment_static", "scale_up_p50_s", "training_steps_mixed",
"training_steps_static", "steps_lost_per_preemption_max", "ideal_utilisation", ...}
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slurmkit.policy.decide import gpu_count  # noqa: E402
from slurmkit.serve.loadgen import tidal_day  # noqa: E402
from slurmkit.slurm.client import SlurmClient  # noqa: E402
from slurmkit.testing.cluster import (  # noqa: E402
    Cluster,
    ContainerRunner,
    exclusive_use,
    wait_until,
)
from slurmkit.testing.serving import Load, Service, submit_trainer  # noqa: E402

DAY_S = float(os.environ.get("BENCH_DAY_S", "300"))
TRAINING_JOBS = int(os.environ.get("BENCH_TRAINING_JOBS", "4"))
TROUGH_RPS, PEAK_RPS = 6.0, 28.0
CAPACITY_GPUS = 32
SLO_MS = 500.0
POLICY_PATH = "/root/tidal-policy.toml"
POLICY = """\
[defaults]
gpus_per_node = 8
nodes = "c[1-4]"

[classes.inference]
priority = 1000
rank = 3
grace_s = 15

[classes.training]
priority = 100
rank = 2
grace_s = 10

[queues.team-a]            # inference: its peak guaranteed (3 nodes)
guaranteed_gpus = 24
borrow_limit_gpus = 0
classes = ["inference", "training"]
default_class = "inference"
users = ["alice"]

[queues.team-b]            # training: one node guaranteed, may borrow the rest
guaranteed_gpus = 8
borrow_limit_gpus = 24
classes = ["training"]
users = ["bob"]
"""


def log(text: str) -> None:
    print(f"[bench/tidal] {text}", file=sys.stderr, flush=True)


def day_profile() -> str:
    phases = tidal_day(DAY_S, TROUGH_RPS, PEAK_RPS, trough=0.45, ramp_up=0.15, peak=0.20)
    return ",".join(f"{p.name}:{p.duration_s:g}:{p.start_rps:g}-{p.end_rps:g}" for p in phases)


def install_policy(cluster: Cluster) -> None:
    cluster.exec("ctl", ["tee", POLICY_PATH], input_text=POLICY)
    cluster.exec("ctl", ["install", "-d", "-m", "1777", "/shared/ckpt", "/shared/logs",
                         "/shared/bench"])
    cluster.exec("ctl", ["slurmkit", "policy", "install", POLICY_PATH], timeout_s=300)


class Sampler:
    """squeue every 2 s: GPUs of inference replicas and of training jobs, running or
    waiting (the demand the ideal utilisation is made of)."""

    def __init__(self, cluster: Cluster):
        self.client = SlurmClient(ContainerRunner(cluster, "ctl", "root"))
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = self.client.jobs(users=["alice", "bob"])
            except Exception as error:  # noqa: BLE001 - a missed sample, not a failed bench
                log(f"squeue sample failed: {error}")
                jobs = None
            if jobs is not None:
                inference = training = 0
                for job in jobs:
                    if job.state not in ("PENDING", "RUNNING", "CONFIGURING"):
                        continue
                    gpus = gpu_count(job.tres_per_node or None) * max(1, job.node_count)
                    if job.name.startswith("serve-"):
                        inference += gpus
                    else:
                        training += gpus
                self.samples.append((time.time(), inference, training))
            self.stop.wait(2.0)

    def ideal(self, start: float, end: float) -> float | None:
        inside = [min(CAPACITY_GPUS, i + t) for at, i, t in self.samples if start <= at <= end]
        return round(statistics.fmean(inside) / CAPACITY_GPUS, 4) if inside else None


def utilisation(cluster: Cluster, start: float, end: float) -> dict:
    """GPU-seconds allocated to running jobs in [start, end] / capacity, by class, from
    every run sacct records (a preempted run counts until it ended)."""
    client = SlurmClient(ContainerRunner(cluster, "ctl", "root"))
    records = client.accounting(since="now-3hours", users=["alice", "bob"])
    used = {"inference": 0.0, "training": 0.0}
    for record in records:
        if record.start_epoch_s is None:
            continue
        run_end = record.end_epoch_s if record.end_epoch_s is not None else end
        overlap = min(run_end, end) - max(record.start_epoch_s, start)
        if overlap > 0:
            kind = "inference" if record.qos == "inference" else "training"
            used[kind] += overlap * record.gpus
    capacity = CAPACITY_GPUS * (end - start)
    return {kind: round(value / capacity, 4) for kind, value in used.items()} | {
        "total": round(sum(used.values()) / capacity, 4)}


def training_metrics(trainings, start: float, end: float) -> dict:
    """Net steps in the window, and the steps lost by each preemption."""
    steps_total, lost, preemptions = 0, [], 0
    for training in trainings:
        events = training.events()
        steps = [(e["time_epoch_s"], e["run"], e["step"]) for e in events
                 if e["event"] == "step" and "time_epoch_s" in e]
        before = max((s for t, _, s in steps if t <= start), default=0)
        until = max((s for t, _, s in steps if t <= end), default=before)
        steps_total += max(0, until - before)
        runs = training.runs()
        for run in runs:
            if run.state != "PREEMPTED" or not run.end_epoch_s or not \
                    start <= run.end_epoch_s <= end + 60:
                continue
            preemptions += 1
            last = max((s for _, r, s in steps if r == run.restarts), default=0)
            restored = [e["step"] for e in events if e["event"] == "restore"
                        and e["run"] == run.restarts + 1 and e.get("rank") == 0]
            saved = [e["step"] for e in events if e["event"] == "checkpoint" and
                     e.get("committed") and e["run"] <= run.restarts]
            kept = restored[0] if restored else max(saved, default=0)
            lost.append(max(0, last - kept))
    return {"steps": steps_total, "preemptions": preemptions,
            "steps_lost_per_preemption": lost}


def scale_ups(service: Service, start: float, end: float) -> dict:
    ready = [e for e in service.events("replica-ready") if start <= e["time_epoch_s"] <= end
             and not e.get("adopted") and "decision_to_ready_s" in e]

    def p50(key):
        values = [e[key] for e in ready if key in e]
        return round(statistics.median(values), 2) if values else None

    return {"count": len(ready), "decision_to_ready_p50_s": p50("decision_to_ready_s"),
            "grace_wait_p50_s": p50("grace_wait_s"), "queue_wait_p50_s": p50("queue_wait_s"),
            "start_p50_s": p50("start_s"), "readiness_p50_s": p50("readiness_s"),
            "reclaimed": sum(1 for e in ready if e.get("grace_wait_s", 0) > 0),
            "each": [{k: e.get(k) for k in ("node", "wait_s", "grace_wait_s", "start_s",
                                            "readiness_s", "decision_to_ready_s")}
                     for e in ready]}


def goodput_html(cluster: Cluster, mode: str, start: float, end: float) -> str | None:
    """The goodput HTML report of the day (GPU use by workload class over time)."""
    def local(epoch: float) -> str:
        return cluster.exec("ctl", ["date", "-d", f"@{int(epoch)}", "+%Y-%m-%dT%H:%M:%S"]
                            ).stdout.strip()
    remote = f"/shared/bench/tidal-{mode}.html"
    result = cluster.exec("ctl", [
        "slurmkit", "goodput", "--since", local(start), "--until", local(end), "--policy",
        POLICY_PATH, "--gpus-total", str(CAPACITY_GPUS), "--events", "/shared/ckpt",
        "--format", "html", "--no-progress", "-o", remote], check=False, timeout_s=300)
    if result.returncode != 0:
        log(f"goodput report of {mode} failed: {result.stderr.strip()[-500:]}")
        return None
    local_path = ROOT / "reports" / f"tidal-{mode}.html"
    local_path.parent.mkdir(exist_ok=True)
    local_path.write_text(cluster.exec("ctl", ["cat", remote]).stdout)
    return str(local_path.relative_to(ROOT))


def run_mode(cluster: Cluster, mode: str) -> dict:
    log(f"{mode}: day of {DAY_S:g} s")
    cluster.cancel_test_jobs()
    service = Service(cluster, f"tidal-{mode}", replicas="1-3", listen_port=18090, port=8200,
                      top={"latency_target_ms": SLO_MS})
    service.write()
    trainings = []
    sampler = Sampler(cluster)
    try:
        service.start()
        service.wait_serving(1, timeout_s=120)
        partition = None if mode == "mixed" else "guar-team-b"
        trainings = [submit_trainer(cluster, f"tidal-{mode}-{i}", partition=partition)
                     for i in range(TRAINING_JOBS)]
        running_wanted = min(TRAINING_JOBS, 3 if mode == "mixed" else 1)

        def stepping():
            jobs = [t.job() for t in trainings]
            active = [t for t, j in zip(trainings, jobs, strict=True)
                      if j and j.state == "RUNNING"]
            return len(active) >= running_wanted and all(t.last_step() > 0 for t in active)
        wait_until(f"{running_wanted} training job(s) stepping", stepping, timeout_s=180,
                   interval_s=1)
        sampler.thread.start()
        load = Load(cluster, service.url, day_profile(), slo_ms=SLO_MS, timeout_s=60,
                    out_path=f"/home/alice/tidal-{mode}-requests.jsonl").start()
        summary = load.join()
        start = load.started_epoch_s + 0.2  # the generator's own start offset
        end = start + DAY_S
        time.sleep(max(0.0, end + 2 - time.time()))
        sampler.stop.set()
        result = {
            "utilisation": utilisation(cluster, start, end),
            "ideal_utilisation": sampler.ideal(start, end),
            "requests": summary["requests"], "failed": summary["failed"],
            "slo_attainment": summary["slo_attainment"],
            "latency_ms": {k: summary[k] for k in ("p50_ms", "p95_ms", "p99_ms")},
            "phases": summary["phases"],
            "scale_ups": scale_ups(service, start, end),
            "scale_events": [(round(e["time_epoch_s"] - start, 1), e["target"])
                             for e in service.events("scale")
                             if start - 5 <= e["time_epoch_s"] <= end],
            **training_metrics(trainings, start, end),
        }
        result["report"] = goodput_html(cluster, mode, start, end)
        log(f"{mode}: {json.dumps(result)}")
        return result
    finally:
        sampler.stop.set()
        stopped = service.stop()
        if stopped.returncode != 0:
            log(f"serve stop: {stopped.stderr.strip()[-500:]}")
        cluster.cancel_test_jobs()


def main() -> None:
    cluster = Cluster()
    with exclusive_use("bench/tidal.py"):
        cluster.up()
        cluster.cancel_test_jobs()
        install_policy(cluster)
        try:
            mixed = run_mode(cluster, "mixed")
            static = run_mode(cluster, "static")
        finally:
            cluster.cancel_test_jobs()
            cluster.reset_policy()
    mixed_u, static_u = mixed["utilisation"]["total"], static["utilisation"]["total"]
    ideal = mixed["ideal_utilisation"]
    lost = mixed["steps_lost_per_preemption"] + static["steps_lost_per_preemption"]
    summary = {
        "mixed_utilisation": mixed_u,
        "static_utilisation": static_u,
        "utilisation_gain": round(mixed_u / static_u, 3) if static_u else None,
        "slo_attainment_mixed": mixed["slo_attainment"],
        "slo_attainment_static": static["slo_attainment"],
        "scale_up_p50_s": mixed["scale_ups"]["decision_to_ready_p50_s"],
        "training_steps_mixed": mixed["steps"],
        "training_steps_static": static["steps"],
        "steps_lost_per_preemption_max": max(lost, default=0),
        "ideal_utilisation": ideal,
        "preemptions_mixed": mixed["preemptions"],
        "utilisation_by_class": {"mixed": mixed["utilisation"], "static": static["utilisation"]},
        "scale_up_mixed": {k: v for k, v in mixed["scale_ups"].items() if k != "each"},
        "scale_up_static": {k: v for k, v in static["scale_ups"].items() if k != "each"},
        "latency_ms": {"mixed": mixed["latency_ms"], "static": static["latency_ms"]},
        "failed_requests": {"mixed": mixed["failed"], "static": static["failed"]},
        "reports": {"mixed": mixed["report"], "static": static["report"]},
        "day_s": DAY_S,
    }
    summary["goals"] = {
        "utilisation_gain>=1.25": bool(summary["utilisation_gain"]
                                       and summary["utilisation_gain"] >= 1.25),
        "mixed>=0.95*ideal": bool(ideal and mixed_u >= 0.95 * ideal),
        "slo_attainment>=0.99": (mixed["slo_attainment"] or 0) >= 0.99
        and (static["slo_attainment"] or 0) >= 0.99,
        "steps_lost_per_preemption<=1": summary["steps_lost_per_preemption_max"] <= 1,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
