"""Goodput metrics (pure functions over ingested runs and checkpoint events).

ETTR (Kokolis et al., HPCA 2025) = productive runtime / wallclock, where a job's
wallclock runs from its first eligibility to the end of its last run and counts the
queue time after every interruption. The rest is badput, split into buckets:

- ``initial_queue``: eligible -> first start.
- ``queue_after_requeue``: end of an interrupted run -> start of the next (failures).
- ``restart_overhead``: start of a restarted run -> its first training step (launch,
  rendezvous, restore). Needs checkpoint events.
- ``lost_work``: time in an interrupted run after the last state the next run resumed
  from (work done twice). Without checkpoint events the whole interrupted run is
  counted as lost (no evidence that anything was kept).
- ``checkpoint_stall``: time the trainer was blocked by periodic/final checkpoints.
- ``preemption``: for runs ended by preemption, their lost work and the queue time
  until the next run.
- ``other``: runs and gaps caused by Slurm's spurious requeue after a grace-time
  preemption (a "PREEMPTED" run that had actually finished its work).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from slurmkit.goodput.events import JobEvents
from slurmkit.goodput.ingest import Run
from slurmkit.slurm import hostlist
from slurmkit.topology.health import blamed_by

BUCKETS = ("initial_queue", "queue_after_requeue", "restart_overhead", "lost_work",
           "checkpoint_stall", "preemption", "other")
INTERRUPTED = frozenset({"NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED", "TIMEOUT",
                         "BOOT_FAIL", "OUT_OF_MEMORY", "CANCELLED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "SPECIAL_EXIT"})
ACTIVE = frozenset({"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING",
                    "REQUEUED", "RESIZING"})


@dataclass
class RunBreakdown:
    restarts: int
    state: str
    start: int | None
    end: int | None
    nodes: int
    gpus: int
    node_list: str
    queue_s: float = 0.0
    lost_s: float = 0.0
    lost_steps: int | None = None
    restart_overhead_s: float = 0.0
    stall_s: float = 0.0
    spurious_preemption: bool = False


@dataclass
class ChainMetrics:
    job_id: int
    display_id: str
    name: str
    user: str
    account: str
    partition: str
    qos: str
    job_class: str
    final_state: str
    runs: list[RunBreakdown]
    eligible: int | None
    end: int | None
    wallclock_s: float
    productive_s: float
    buckets: dict[str, float]
    node_failures: int
    preemptions: int
    gpus: int
    nodes: int
    evidence: str  # "events" or "sacct"
    lost_steps: int | None

    @property
    def ettr(self) -> float | None:
        return self.productive_s / self.wallclock_s if self.wallclock_s > 0 else None

    @property
    def gpu_hours(self) -> float:
        return sum(r.gpus * ((r.end or 0) - (r.start or 0)) for r in self.runs
                   if r.start and r.end) / 3600

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id, "display_id": self.display_id, "name": self.name,
            "user": self.user, "account": self.account, "partition": self.partition,
            "qos": self.qos, "class": self.job_class, "runs": len(self.runs),
            "final_state": self.final_state, "node_failures": self.node_failures,
            "preemptions": self.preemptions,
            "ettr": None if self.ettr is None else round(self.ettr, 4),
            "wallclock_s": round(self.wallclock_s, 1), "productive_s": round(self.productive_s, 1),
            "badput_s": {name: round(value, 1) for name, value in self.buckets.items()},
            "lost_steps": self.lost_steps, "gpus": self.gpus, "nodes": self.nodes,
            "gpu_hours": round(self.gpu_hours, 3), "evidence": self.evidence,
            "eligible_epoch_s": self.eligible, "end_epoch_s": self.end,
            "run_details": [{
                "run": r.restarts, "state": r.state, "start_epoch_s": r.start,
                "end_epoch_s": r.end, "nodes": r.node_list, "gpus": r.gpus,
                "queue_s": round(r.queue_s, 1), "lost_s": round(r.lost_s, 1),
                "lost_steps": r.lost_steps, "restart_overhead_s": round(r.restart_overhead_s, 1),
                "checkpoint_stall_s": round(r.stall_s, 2),
                "spurious_preemption": r.spurious_preemption} for r in self.runs],
        }


def group_chains(runs: Iterable[Run]) -> dict[int, list[Run]]:
    chains: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        chains[run.job_id].append(run)
    for chain in chains.values():
        chain.sort(key=lambda run: (run.restarts, run.start or 0))
    return chains


def classify(run: Run, classes: Iterable[str] = ()) -> str:
    """The workload class: the QOS when it names a class, else the partition's
    borrowed-class suffix, else the QOS."""
    classes = set(classes)
    if run.qos in classes or not classes:
        return run.qos or "unknown"
    if run.partition.startswith("borrow-") and run.partition[7:] in classes:
        return run.partition[7:]
    return run.qos or "unknown"


def chain_metrics(chain: list[Run], events: JobEvents | None = None, *, now: int,
                  classes: Iterable[str] = ()) -> ChainMetrics:
    first = chain[0]
    last = chain[-1]
    eligible = first.eligible or first.submit or first.start
    end = last.end if last.end else (now if last.state in ACTIVE or last.start else last.end)
    wallclock = max(0.0, (end or now) - (eligible or now))
    buckets = dict.fromkeys(BUCKETS, 0.0)
    total_steps = events.total_steps if events else None
    breakdowns: list[RunBreakdown] = []
    finished_at: int | None = None  # the run in which the work was complete
    for index, run in enumerate(chain):
        run_events = events.runs.get(run.restarts) if events else None
        if run_events is not None and not run_events.steps and run_events.restored_step is None:
            run_events = None  # no step evidence for this run: judge it from sacct alone
        breakdown = RunBreakdown(run.restarts, run.state, run.start, run.end, run.nodes,
                                 run.gpus, run.node_list)
        previous = chain[index - 1] if index else None
        # The wait before this run.
        if index == 0:
            if run.start and eligible:
                breakdown.queue_s = max(0.0, run.start - eligible)
                buckets["initial_queue"] += breakdown.queue_s
            elif eligible:
                buckets["initial_queue"] += max(0.0, (end or now) - eligible)
        elif previous.end:
            wait = max(0.0, (run.start or end or now) - previous.end)
            breakdown.queue_s = wait
            prior = breakdowns[-1]
            if finished_at is not None:
                buckets["other"] += wait
            elif previous.state == "PREEMPTED" and not prior.spurious_preemption:
                buckets["preemption"] += wait
            else:
                buckets["queue_after_requeue"] += wait
        if run.start and (run.end or end):
            elapsed = max(0.0, (run.end or end) - run.start)
            if finished_at is not None:
                buckets["other"] += elapsed  # a run after the work was already done
            elif run_events is not None:
                _with_events(run, run_events, chain, index, events, breakdown, buckets,
                             elapsed, total_steps)
                if run_events.final_step is not None or (
                        total_steps and run_events.max_step == total_steps
                        and run.state == "PREEMPTED"):
                    finished_at = index
                    if run.state == "PREEMPTED":
                        breakdown.spurious_preemption = True
            elif index < len(chain) - 1 or run.state in INTERRUPTED:
                if index < len(chain) - 1 or run.state not in ("FAILED", "CANCELLED",
                                                                "TIMEOUT", "OUT_OF_MEMORY"):
                    # Interrupted and requeued, nothing says what was kept: all lost.
                    breakdown.lost_s = elapsed
                    key = "preemption" if run.state == "PREEMPTED" else "lost_work"
                    buckets[key] += elapsed
        breakdowns.append(breakdown)
    badput = sum(buckets.values())
    productive = max(0.0, wallclock - badput)
    lost_steps = None
    if events:
        lost_steps = sum(b.lost_steps or 0 for b in breakdowns)
    node_failures = sum(1 for run in chain if run.state == "NODE_FAIL")
    preemptions = sum(1 for run, breakdown in zip(chain, breakdowns, strict=True)
                      if run.state == "PREEMPTED" and not breakdown.spurious_preemption)
    return ChainMetrics(
        job_id=first.job_id, display_id=first.display_id, name=first.name, user=first.user,
        account=last.account, partition=last.partition, qos=last.qos,
        job_class=classify(last, classes), final_state=last.state, runs=breakdowns,
        eligible=eligible, end=end, wallclock_s=wallclock, productive_s=productive,
        buckets=buckets, node_failures=node_failures, preemptions=preemptions,
        gpus=max(run.gpus for run in chain), nodes=max(run.nodes for run in chain),
        evidence="events" if events else "sacct", lost_steps=lost_steps)


def _with_events(run: Run, run_events, chain, index, events: JobEvents,
                 breakdown: RunBreakdown, buckets: dict, elapsed: float,
                 total_steps: int | None) -> None:
    """Split an ingested run's time with its checkpoint events."""
    stall = min(run_events.stall_s, elapsed)
    breakdown.stall_s = stall
    buckets["checkpoint_stall"] += stall
    first_step = run_events.first_step_time
    if index > 0:
        overhead = (first_step - run.start) if first_step else elapsed
        overhead = min(max(0.0, overhead), elapsed)
        breakdown.restart_overhead_s = overhead
        buckets["restart_overhead"] += overhead
    if index == len(chain) - 1 and run.state not in INTERRUPTED:
        return  # the last run, still running or completed: nothing lost
    following = events.runs.get(chain[index + 1].restarts) if index + 1 < len(chain) else None
    resumed_from = following.restored_step if following else None
    end = run.end or (run.start + elapsed)
    if resumed_from is None:
        kept_until = None
    else:
        kept_until = run_events.time_of_step(resumed_from)
        if kept_until is None and run_events.steps and resumed_from >= run_events.max_step:
            kept_until = run_events.steps[-1][1]
    start_of_work = first_step if first_step else run.start
    lost = end - (kept_until if kept_until is not None else start_of_work)
    lost = min(max(0.0, lost), max(0.0, elapsed - breakdown.restart_overhead_s))
    breakdown.lost_s = lost
    if run_events.max_step is not None and resumed_from is not None:
        breakdown.lost_steps = max(0, run_events.max_step - resumed_from)
    key = "preemption" if run.state == "PREEMPTED" else "lost_work"
    buckets[key] += lost


@dataclass
class Totals:
    wallclock_s: float = 0.0
    productive_s: float = 0.0
    gpu_wallclock_h: float = 0.0
    gpu_productive_h: float = 0.0
    buckets_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))
    buckets_gpu_h: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))
    jobs: int = 0
    runs: int = 0
    node_failures: int = 0
    preemptions: int = 0

    def add(self, chain: ChainMetrics) -> None:
        gpus = max(chain.gpus, 0)
        self.jobs += 1
        self.runs += len(chain.runs)
        self.node_failures += chain.node_failures
        self.preemptions += chain.preemptions
        self.wallclock_s += chain.wallclock_s
        self.productive_s += chain.productive_s
        self.gpu_wallclock_h += gpus * chain.wallclock_s / 3600
        self.gpu_productive_h += gpus * chain.productive_s / 3600
        for name, value in chain.buckets.items():
            self.buckets_s[name] += value
            self.buckets_gpu_h[name] += gpus * value / 3600

    def to_dict(self) -> dict:
        return {
            "jobs": self.jobs, "runs": self.runs, "node_failures": self.node_failures,
            "preemptions": self.preemptions,
            "ettr": round(self.productive_s / self.wallclock_s, 4) if self.wallclock_s else None,
            "gpu_weighted_ettr": round(self.gpu_productive_h / self.gpu_wallclock_h, 4)
            if self.gpu_wallclock_h else None,
            "wallclock_h": round(self.wallclock_s / 3600, 3),
            "productive_h": round(self.productive_s / 3600, 3),
            "gpu_hours": round(self.gpu_wallclock_h, 3),
            "productive_gpu_hours": round(self.gpu_productive_h, 3),
            "badput_h": {k: round(v / 3600, 3) for k, v in self.buckets_s.items()},
            "badput_gpu_hours": {k: round(v, 3) for k, v in self.buckets_gpu_h.items()},
        }


def aggregate(chains: Iterable[ChainMetrics]) -> dict[str, dict[str, Totals]]:
    """Totals per queue (account), per workload class, and for the cluster."""
    result: dict[str, dict[str, Totals]] = {"queue": defaultdict(Totals),
                                            "class": defaultdict(Totals),
                                            "cluster": defaultdict(Totals)}
    for chain in chains:
        result["queue"][chain.account or "(none)"].add(chain)
        result["class"][chain.job_class].add(chain)
        result["cluster"]["all"].add(chain)
    return result


def node_failure_table(runs: Iterable[Run], node_events: Mapping[str, list[int]] | None = None
                       ) -> list[dict]:
    """Nodes by NODE_FAIL runs they were in; with node DOWN events, the failures
    blamed on them (the node that went down around the run's end)."""
    appearances: dict[str, int] = defaultdict(int)
    blamed: dict[str, int] = defaultdict(int)
    for run in runs:
        if run.state != "NODE_FAIL" or not run.node_list:
            continue
        nodes = hostlist.expand(run.node_list)
        for node in nodes:
            appearances[node] += 1
        if node_events:
            culprits = [node for node in nodes
                        if blamed_by(node_events.get(node, ()), run.start, run.end)]
            for node in culprits:
                blamed[node] += 1
    rows = [{"node": node, "node_fail_runs": count, "blamed_failures": blamed.get(node, 0)
             if node_events else None} for node, count in appearances.items()]
    return sorted(rows, key=lambda row: (-(row["blamed_failures"] or 0), -row["node_fail_runs"],
                                         row["node"]))


def preemption_attribution(runs: list[Run], chains: Mapping[int, ChainMetrics],
                           window_s: int = 120) -> list[dict]:
    """Who preempted whom: each real preemption is attributed to the job that started
    on the victim's nodes closest after it ended; GPU-hours lost = the victim's GPUs x
    (lost work + wait until it ran again)."""
    starts = sorted((run.start, i) for i, run in enumerate(runs) if run.start)
    start_times = [start for start, _ in starts]
    pairs: dict[tuple[str, str, str, str], dict] = {}
    for chain in chains.values():
        for position, breakdown in enumerate(chain.runs):
            if breakdown.state != "PREEMPTED" or breakdown.spurious_preemption or not breakdown.end:
                continue
            victim_nodes = set(hostlist.expand(breakdown.node_list))
            low = bisect.bisect_left(start_times, breakdown.end - window_s)
            high = bisect.bisect_right(start_times, breakdown.end + window_s)
            best = None
            for _, index in starts[low:high]:
                candidate = runs[index]
                if candidate.job_id == chain.job_id:
                    continue
                if victim_nodes & set(hostlist.expand(candidate.node_list)):
                    if best is None or abs(candidate.start - breakdown.end) < abs(best.start - breakdown.end):
                        best = candidate
            wait = chain.runs[position + 1].queue_s if position + 1 < len(chain.runs) else 0.0
            lost_gpu_h = breakdown.gpus * (breakdown.lost_s + wait) / 3600
            victim_class = chain.job_class
            key = (best.account if best else "(unknown)", _run_class(best) if best else "(unknown)",
                   chain.account, victim_class)
            row = pairs.setdefault(key, {"preemptor_queue": key[0], "preemptor_class": key[1],
                                         "victim_queue": key[2], "victim_class": key[3],
                                         "preemptions": 0, "gpu_hours_lost": 0.0})
            row["preemptions"] += 1
            row["gpu_hours_lost"] += lost_gpu_h
    rows = list(pairs.values())
    for row in rows:
        row["gpu_hours_lost"] = round(row["gpu_hours_lost"], 3)
    return sorted(rows, key=lambda row: -row["gpu_hours_lost"])


def _run_class(run: Run) -> str:
    if run.partition.startswith("borrow-"):
        return run.partition[7:]
    return run.qos or "unknown"


def utilisation(chains: Iterable[ChainMetrics], capacity_gpus: int, start: int, end: int,
                bins: int = 48) -> dict:
    """GPU use by class per time bin, as fractions of capacity (the rest is idle)."""
    bins = max(1, bins)
    width = max(1.0, (end - start) / bins)
    series: dict[str, list[float]] = defaultdict(lambda: [0.0] * bins)
    for chain in chains:
        for run in chain.runs:
            if not run.start or not run.gpus:
                continue
            run_end = run.end or end
            first = max(0, int((run.start - start) // width))
            last = min(bins - 1, int((run_end - start) // width))
            for position in range(first, last + 1):
                bin_start = start + position * width
                overlap = min(run_end, bin_start + width) - max(run.start, bin_start)
                if overlap > 0:
                    series[chain.job_class][position] += run.gpus * overlap
    capacity = max(capacity_gpus, 1) * width
    fractions = {name: [round(v / capacity, 4) for v in values] for name, values in series.items()}
    idle = [round(max(0.0, 1 - sum(values[i] for values in fractions.values())), 4)
            for i in range(bins)]
    return {"start_epoch_s": start, "bin_s": width, "capacity_gpus": capacity_gpus,
            "classes": fractions, "idle": idle}


def expected_ettr(chain: ChainMetrics, *, failures_per_node_day: float, restart_s: float,
                  interval_s: float | None, write_s: float | None) -> dict | None:
    """The expected-ETTR model beside the measured one, and the optimal interval:
    E[ETTR] = (1 - N r_f (u0 + dt/2)) / (1 + w / dt); dt* = sqrt(2 w MTTF)."""
    nodes = max(chain.nodes, 1)
    mttf_days = 1 / (nodes * failures_per_node_day) if failures_per_node_day > 0 else math.inf
    result = {"job_id": chain.job_id, "nodes": nodes, "measured_ettr": chain.ettr and round(chain.ettr, 4),
              "mttf_h": None if math.isinf(mttf_days) else round(mttf_days * 24, 2)}
    if write_s and not math.isinf(mttf_days):
        result["optimal_interval_s"] = round(math.sqrt(2 * write_s * mttf_days * 86400), 1)
    if interval_s and write_s is not None:
        u0 = restart_s / 86400
        dt = interval_s / 86400
        value = (1 - nodes * failures_per_node_day * (u0 + dt / 2)) / (1 + (write_s or 0) / interval_s)
        result["expected_ettr"] = round(value, 4)
        result["checkpoint_interval_s"] = round(interval_s, 1)
        result["checkpoint_write_s"] = round(write_s, 3)
    return result


def checkpoint_interval(events: JobEvents | None) -> tuple[float | None, float | None]:
    """(median seconds between periodic checkpoints, median write seconds) of a job."""
    if not events:
        return None, None
    intervals, writes = [], []
    for run in events.runs.values():
        times = sorted(at for at, _, _ in run.periodic)
        intervals += [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        writes += [write for _, _, write in run.periodic]
    return median_or_none(intervals), median_or_none(writes)


def median_or_none(values: Iterable[float]) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None
