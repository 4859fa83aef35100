"""Goodput over the column store: runs grouped into jobs, ETTR and the badput buckets,
node failures, preemptions and who caused them. One engine, vectorized over every
job; the runs of jobs with checkpoint events are refined one by one.

ETTR (Kokolis et al., HPCA 2025) = productive time / wallclock, where a job's
wallclock runs from its first eligibility to the end of its last run. The rest:

- ``initial_queue``: eligible -> first start.
- ``queue_after_requeue``: end of an interrupted run -> start of the next.
- ``restart_overhead``: start of a requeued run -> its first step, and detection ->
  first resumed step of a restart inside the allocation (events needed).
- ``failure_detection``: a fault (the last step completed) -> Slurm ending the run, or
  the ranks declaring the peer dead (events needed).
- ``lost_work``: work done twice, from the state the next attempt resumed from to the
  fault; without events, the whole interrupted run.
- ``checkpoint_stall``: the trainer blocked by periodic/final checkpoints.
- ``preemption``: lost work and queue time of runs that a preemptor ended.
- ``other``: the wait and no-op run after Slurm's spurious requeue (PREEMPTED, no preemptor).

A job is one id as sacct shows it (``12_3`` for an array task, ``7+1`` for a het
component; JobIDRaw beside it). Slurm's records of a ``--no-kill`` job it shrank
after losing a node (a ``RESIZING`` record, then one more with the same restart
index) are one run.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from slurmkit.goodput.events import JobEvents
from slurmkit.goodput.load import IngestStats, Runs, Text, concat, merge_codes
from slurmkit.slurm import hostlist
from slurmkit.topology.health import blamed_by

BUCKETS = ("initial_queue", "queue_after_requeue", "restart_overhead", "failure_detection",
           "lost_work", "checkpoint_stall", "preemption", "other")
B = {name: index for index, name in enumerate(BUCKETS)}
INTERRUPTED = frozenset({"NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED", "TIMEOUT",
                         "BOOT_FAIL", "OUT_OF_MEMORY", "CANCELLED", "REQUEUE_HOLD",
                         "REQUEUE_FED", "SPECIAL_EXIT"})
ACTIVE = frozenset({"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING",
                    "REQUEUED", "RESIZING"})
#: A job that ends in one of these is over: its last run is not work to redo.
FINAL_FAILURES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"})
#: A preemptor starts on the victim's nodes once they are free: from a little before
#: the victim's recorded end (records are written apart) to grace + KillWait after it.
PREEMPTOR_EARLY_S = 5
DEFAULT_PREEMPTOR_WINDOW_S = 120
#: Per-job counts: their names in the report -> ``Goodput.c_<name>``.
COUNTS = {"node_failures": "node_failures", "preemptions": "preemptions",
          "spurious_requeues": "spurious", "inplace_restarts": "inplace", "resizes": "resizes"}


@dataclass
class Goodput:
    """Everything computed; arrays per segment (``runs``, sacct records), per run
    (``r_*``) and per job (``c_*``)."""

    runs: Runs
    r_first: np.ndarray  # first record of each run
    r_last: np.ndarray
    r_chain: np.ndarray
    r_start: np.ndarray
    r_end: np.ndarray
    r_gpus: np.ndarray
    r_gpu_s: np.ndarray
    r_queue: np.ndarray
    r_split: np.ndarray  # (runs x buckets) seconds inside each run
    r_lost_steps: np.ndarray  # -1: unknown
    r_preemptor: np.ndarray  # record of the preemptor in ``preemptor_runs``, -1: none
    r_spurious: np.ndarray
    r_restarts: dict[int, list[dict]]  # restarts inside the allocation, per run
    c_first: np.ndarray  # first run of each job
    c_last: np.ndarray
    c_eligible: np.ndarray
    c_end: np.ndarray
    c_wallclock: np.ndarray
    c_productive: np.ndarray
    c_buckets: np.ndarray
    c_events: np.ndarray
    c_node_failures: np.ndarray
    c_preemptions: np.ndarray
    c_spurious: np.ndarray
    c_inplace: np.ndarray
    c_resizes: np.ndarray
    c_gpus: np.ndarray
    c_nodes: np.ndarray
    c_class: Text
    events: dict[int, JobEvents]
    #: Where preemptors were looked for: ``runs`` itself, or every record around the
    #: selected jobs' runs (``compute(context=...)``).
    preemptor_runs: Runs

    def __len__(self) -> int:
        return int(self.c_first.size)


def classify(qos: str, partition: str, classes=()) -> str:
    """The workload class: the QOS when it names a class, else the partition's
    borrowed-class suffix, else the QOS."""
    if not classes or qos in classes:
        return qos or "unknown"
    if partition.startswith("borrow-") and partition[7:] in classes:
        return partition[7:]
    return qos or "unknown"


def drop_superseded(runs: Runs, stats: IngestStats | None = None) -> Runs:
    """Without records of runs that never started and that a later record of the same
    job supersedes. Slurm leaves one behind when slurmctld restarts while a requeued
    job is pending (seen in the fault campaign: ``1:PENDING`` then ``1:COMPLETED``);
    counted as a run it would turn the rest of the job into queue time."""
    same_next = np.zeros(len(runs), bool)
    same_next[:-1] = (runs.job_id[:-1] == runs.job_id[1:]) & (
        runs.display.codes[:-1] == runs.display.codes[1:])
    stale = same_next & (runs.start == 0)
    if stats is not None:
        stats.superseded += int(stale.sum())
    return runs.take(np.flatnonzero(~stale)) if stale.any() else runs


def compute(runs: Runs, *, now: int, events: dict[int, JobEvents] | None = None,
            classes=(), ranks: dict[str, int] | None = None,
            window_s: int = DEFAULT_PREEMPTOR_WINDOW_S, stats: IngestStats | None = None,
            context: Runs | None = None) -> Goodput:
    """``context``: every record to look for preemptors in when ``runs`` holds only
    the jobs asked about (their preemptors are other jobs)."""
    events = events or {}
    runs = drop_superseded(runs, stats)
    n = len(runs)
    new_chain = np.ones(n, bool)
    new_chain[1:] = (runs.job_id[1:] != runs.job_id[:-1]) | (
        runs.display.codes[1:] != runs.display.codes[:-1])
    new_run = new_chain.copy()
    new_run[1:] |= ~runs.state.mask({"RESIZING"})[:-1] | (runs.restarts[1:] != runs.restarts[:-1])
    r_first = np.flatnonzero(new_run)
    r_last = np.append(r_first[1:] - 1, n - 1) if n else r_first
    chain_of_record = np.cumsum(new_chain) - 1
    r_chain = chain_of_record[r_first]
    is_first = new_chain[r_first]  # the first run of its job
    c_first = np.flatnonzero(is_first)
    c_last = np.append(c_first[1:] - 1, r_first.size - 1) if n else c_first
    r_state = Text(runs.state.codes[r_last], runs.state.values)
    r_start, r_end = runs.start[r_first], runs.end[r_last]
    first_record = r_first[c_first]
    eligible = np.where(runs.eligible[first_record] > 0, runs.eligible[first_record],
                        np.where(runs.submit[first_record] > 0, runs.submit[first_record],
                                 runs.start[first_record]))
    last_end = r_end[c_last]
    going = r_state.mask(ACTIVE)[c_last] | (r_start[c_last] > 0)
    c_end = np.where(last_end > 0, last_end, np.where(going, now, 0))
    end_or_now = np.where(c_end > 0, c_end, now)
    wallclock = np.maximum(0, end_or_now - np.where(eligible > 0, eligible, now)).astype(float)
    run_end = np.where(r_end > 0, r_end, c_end[r_chain])
    elapsed = np.where((r_start > 0) & (run_end > 0), np.maximum(0, run_end - r_start), 0)
    record_run = np.cumsum(new_run) - 1
    record_end = np.where(runs.end > 0, runs.end, run_end[record_run] if n else 0)
    record_s = np.where((runs.start > 0) & (record_end > 0), np.maximum(0, record_end - runs.start), 0)
    r_gpu_s = per_group(np.add, runs.gpus * record_s, r_first).astype(float)
    r_gpus = per_group(np.maximum, runs.gpus, r_first)
    # Waits before each run.
    r_queue = np.zeros(r_first.size)
    initial = np.where(r_start[c_first] > 0, r_start[c_first] - eligible, end_or_now - eligible)
    r_queue[c_first] = np.where(eligible > 0, np.maximum(0, initial), 0)
    later = np.flatnonzero(~is_first)
    resumed = np.where(r_start[later] > 0, r_start[later],
                       np.where(c_end[r_chain[later]] > 0, c_end[r_chain[later]], now))
    r_queue[later] = np.where(r_end[later - 1] > 0, np.maximum(0, resumed - r_end[later - 1]), 0)
    # Preemptions: a PREEMPTED run counts as one only when a preemptor is found. A
    # preempted job that requeued itself (REQUEUED) keeps Slurm's grace flag: its next run
    # is then spurious, and the REQUEUED one was the preemption (docs/slurm-notes.md).
    preempted = r_state.mask({"PREEMPTED"}) & (r_end > 0)
    before = np.zeros(r_first.size, bool)
    before[later - 1] = preempted[later] & r_state.mask({"REQUEUED"})[later - 1]
    r_preemptor = np.full(r_first.size, -1, np.int64)
    victims = np.flatnonzero(preempted | before)
    pool = runs if context is None else context
    r_preemptor[victims] = find_preemptors(runs, r_last[victims], classes, ranks, window_s,
                                           pool=pool)
    spurious = preempted & (r_preemptor < 0)
    preempted |= before & np.append(spurious[1:], False)  # the next run: its own job's
    r_preemptor[~preempted] = -1
    # Runs split by sacct alone; runs with events are refined below.
    last_in_chain = np.zeros(r_first.size, bool)
    last_in_chain[c_last] = True
    interrupted = r_state.mask(INTERRUPTED) & ~r_state.mask(FINAL_FAILURES)
    lost = (~last_in_chain | interrupted) & ~spurious
    split = np.zeros((r_first.size, len(BUCKETS)))
    lost_bucket = np.where(preempted & ~spurious, B["preemption"], B["lost_work"])
    split[np.flatnonzero(lost), lost_bucket[lost]] = elapsed[lost]
    lost_steps = np.full(r_first.size, -1, np.int64)
    c_events = np.zeros(c_first.size, bool)
    restarts: dict[int, list[dict]] = {}
    finished = spurious.copy()
    if events:
        job_ids = runs.job_id[first_record]
        for chain in np.flatnonzero(np.isin(job_ids, list(events))).tolist():
            job = events[int(job_ids[chain])]
            c_events[chain] = _refine(job, range(int(c_first[chain]), int(c_last[chain]) + 1),
                                      runs.restarts[r_first], r_start, run_end, elapsed, r_state,
                                      preempted & ~spurious, split, lost_steps, finished,
                                      spurious, restarts)
    # After the run that finished the work: every wait and run is ``other``.
    done_before = np.zeros(r_first.size, bool)
    seen = np.cumsum(finished) - np.repeat(np.cumsum(finished)[c_first] - finished[c_first],
                                           np.diff(np.append(c_first, r_first.size)))
    done_before[~is_first] = seen[later - 1] > 0
    split[done_before] = 0
    split[done_before, B["other"]] = elapsed[done_before]
    wait_bucket = np.where(done_before[later], B["other"],
                           np.where(preempted[later - 1] & ~spurious[later - 1], B["preemption"],
                                    B["queue_after_requeue"]))
    c_buckets = np.zeros((c_first.size, len(BUCKETS)))
    c_buckets[:, B["initial_queue"]] = r_queue[c_first]
    np.add.at(c_buckets, (r_chain[later], wait_bucket), r_queue[later])
    np.add.at(c_buckets, r_chain, split)
    productive = np.maximum(0.0, wallclock - c_buckets.sum(axis=1))
    inplace = np.zeros(c_first.size, np.int64)
    dead = np.zeros(c_first.size, np.int64)
    for run, items in restarts.items():
        inplace[r_chain[run]] += len(items)
        dead[r_chain[run]] += sum(1 for item in items if item["dead_nodes"])
    count = lambda mask: np.bincount(r_chain[mask], minlength=c_first.size)  # noqa: E731
    return Goodput(
        runs=runs, r_first=r_first, r_last=r_last, r_chain=r_chain, r_start=r_start,
        r_end=r_end, r_gpus=r_gpus, r_gpu_s=r_gpu_s, r_queue=r_queue, r_split=split,
        r_lost_steps=lost_steps, r_preemptor=r_preemptor, r_spurious=spurious,
        preemptor_runs=pool,
        r_restarts=restarts, c_first=c_first, c_last=c_last, c_eligible=eligible, c_end=c_end,
        c_wallclock=wallclock, c_productive=productive, c_buckets=c_buckets, c_events=c_events,
        c_node_failures=count(r_state.mask({"NODE_FAIL"})) + dead,
        c_preemptions=count(preempted & ~spurious), c_spurious=count(spurious), c_inplace=inplace,
        c_resizes=(r_last[c_last] - r_first[c_first]) - (c_last - c_first),  # records - runs
        c_gpus=per_group(np.maximum, r_gpus, c_first),
        c_nodes=per_group(np.maximum, per_group(np.maximum, runs.nodes, r_first), c_first),
        c_class=classes_of(runs, r_last[c_last], tuple(classes)), events=events)


def classes_of(runs: Runs, rows: np.ndarray, classes) -> Text:
    """The workload class of the records ``rows``: ``classify`` once per distinct (QOS,
    partition), the classes in the order the rows first show them."""
    width = max(len(runs.partition.values), 1)
    pairs, first, pair_of = np.unique(runs.qos.codes[rows].astype(np.int64) * width
                                      + runs.partition.codes[rows], return_index=True,
                                      return_inverse=True)
    order = np.argsort(first)
    return merge_codes(np.argsort(order)[pair_of.reshape(-1)], [classify(
        runs.qos.values[pair // width], runs.partition.values[pair % width], classes)
        for pair in pairs[order].tolist()])


def per_group(ufunc: np.ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` over the groups that begin at ``starts`` (none: empty)."""
    return ufunc.reduceat(values, starts) if starts.size else values[:0]


def _refine(job: JobEvents, chain_runs: range, run_index, start, end, elapsed, state: Text,
            real_preemption, split, lost_steps, finished, spurious, restarts) -> bool:
    """Split each run of one job with its checkpoint events; True when any run had some."""
    total = job.total_steps
    found = False
    for position, run in enumerate(chain_runs):
        mine = job.runs.get(int(run_index[run]))
        if mine is None or not (mine.steps or mine.restored_step is not None or mine.restarts):
            continue
        found = True
        following = job.runs.get(int(run_index[run + 1])) if run + 1 in chain_runs else None
        budget = [float(elapsed[run])]
        row = np.zeros(len(BUCKETS))
        steps_lost = 0

        def charge(bucket: str, seconds: float, budget=budget, row=row) -> None:
            seconds = min(max(0.0, seconds), budget[0])
            budget[0] -= seconds
            row[B[bucket]] += seconds

        begin, stop = float(start[run]), float(end[run])
        first_step = mine.steps[0][0] if mine.steps else None
        charge("checkpoint_stall", mine.stall_s)
        if position > 0:
            charge("restart_overhead", (first_step - begin) if first_step else budget[0])
        items = []
        for restart in mine.restarts:
            kept = mine.step_time(restart.checkpoint_step, restart.fault_s) or first_step or begin
            before = mine.last_step_before(restart.fault_s)
            item = {"attempt": restart.attempt, "dead_nodes": list(restart.dead_nodes),
                    "spare_used": restart.spare_used, "fault_epoch_s": restart.fault_s,
                    "failure_detection_s": round(max(0.0, restart.detected_s - restart.fault_s), 1),
                    "restart_overhead_s": round(max(0.0, (restart.resumed_s or stop)
                                                    - restart.detected_s), 1),
                    "lost_work_s": round(max(0.0, restart.fault_s - kept), 1),
                    "lost_steps": max(0, before[1] - restart.checkpoint_step) if before else 0,
                    "resumed": restart.resumed_s is not None}
            charge("failure_detection", item["failure_detection_s"])
            charge("restart_overhead", item["restart_overhead_s"])
            charge("lost_work", item["lost_work_s"])
            steps_lost += item["lost_steps"]
            items.append(item)
        if items:
            restarts[run] = items
        state_name = state[run]
        done = mine.final_step is not None or (
            bool(total) and mine.max_step == total and state_name == "PREEMPTED")
        last = run == chain_runs[-1]
        if not done and not spurious[run] and (not last or (state_name in INTERRUPTED
                                      and state_name not in FINAL_FAILURES)):
            resumed_from = following.restored_step if following else None
            kept_until = None
            if resumed_from is not None:
                kept_until = mine.step_time(resumed_from)
                if kept_until is None and mine.steps and resumed_from >= mine.max_step:
                    kept_until = mine.steps[-1][0]
                if mine.max_step is not None:
                    steps_lost += max(0, mine.max_step - resumed_from)
            base = kept_until if kept_until is not None else (first_step or begin)
            if real_preemption[run]:
                charge("preemption", stop - base)
            else:
                sign_of_life = max(mine.steps[-1][0] if mine.steps else begin, base)
                charge("lost_work", sign_of_life - base)
                charge("failure_detection", stop - sign_of_life)
        if done and not finished[chain_runs[0]:run + 1].any():
            finished[run] = True
            spurious[run] |= state_name == "PREEMPTED"
        split[run] = row
        lost_steps[run] = steps_lost
    return found


def find_preemptors(victim_runs: Runs, victims: np.ndarray, classes=(), ranks=None,
                    window_s: int = DEFAULT_PREEMPTOR_WINDOW_S, batch: int = 20_000,
                    pool: Runs | None = None) -> np.ndarray:
    """For each victim record (of ``victim_runs``), the record in ``pool`` (default:
    the same records) of the job that started on its nodes closest to its end, from
    PREEMPTOR_EARLY_S before to ``window_s`` after (-1: none). With workload ``ranks``
    (from a policy), only a job in a guaranteed partition or of a higher-ranked class
    than the victim's qualifies. Single node ranges are compared as arrays; other node
    lists exactly, one pair at a time."""
    if not victims.size:  # nothing to merge or sort for
        return np.zeros(0, np.int64)
    if pool is not None and pool is not victim_runs:
        # Victims and candidates in one store: the victims' records, then the pool's.
        merged = concat([victim_runs, pool])
        found = find_preemptors(merged, victims, classes, ranks, window_s, batch)
        own = found < len(victim_runs)
        # A candidate among the victims' own records is also in the pool (the pool
        # holds every record): find it there by job and start.
        for index in np.flatnonzero(own & (found >= 0)).tolist():
            record = int(found[index])
            same = np.flatnonzero((pool.job_id == victim_runs.job_id[record])
                                  & (pool.start == victim_runs.start[record]))
            found[index] = int(same[0]) if same.size else -1
        return np.where(own, found, found - len(victim_runs))
    runs = victim_runs
    started = np.flatnonzero(runs.start > 0)
    by_start = started[np.argsort(runs.start[started], kind="stable")]
    start_sorted = runs.start[by_start]
    ends = runs.end[victims]
    low = np.searchsorted(start_sorted, ends - PREEMPTOR_EARLY_S, side="left")
    high = np.searchsorted(start_sorted, ends + window_s, side="right")
    rank_of = None
    if ranks:
        rank_of = {}
        for q in set(runs.qos.codes.tolist()):
            for p in set(runs.partition.codes.tolist()):
                name = classify(runs.qos.values[q], runs.partition.values[p], tuple(ranks))
                guaranteed = not runs.partition.values[p].startswith("borrow-")
                rank_of[q, p] = math.inf if guaranteed else ranks.get(name, 0)
    # Columns in start order (a victim's candidates are one slice) and per victim.
    columns = (runs.job_id, runs.node_first, runs.node_last, runs.node_prefix.codes)
    s_job, s_first, s_last, s_prefix = (column[by_start] for column in columns)
    v_job, v_first, v_last, v_prefix = (column[victims] for column in columns)
    best = np.full(victims.size, -1, np.int64)
    for offset in range(0, victims.size, batch):
        part = slice(offset, offset + batch)
        counts = high[part] - low[part]
        total = int(counts.sum())
        if not total:
            continue
        owner = np.repeat(np.arange(offset, offset + counts.size), counts)
        position = np.arange(total) + np.repeat(low[part] - np.cumsum(counts) + counts, counts)
        each = lambda column, counts=counts, part=part: np.repeat(column[part], counts)  # noqa: E731
        other = s_job[position] != each(v_job)
        both = (s_first[position] >= 0) & each(v_first >= 0)
        match = other & both & (s_prefix[position] == each(v_prefix)) & (
            s_first[position] <= each(v_last)) & (each(v_first) <= s_last[position])
        for pair in np.flatnonzero(other & ~both).tolist():
            match[pair] = bool(set(_expand(runs.node_list[int(victims[owner[pair]])]))
                               & set(_expand(runs.node_list[int(by_start[position[pair]])])))
        if rank_of is not None:
            for pair in np.flatnonzero(match).tolist():
                c, v = int(by_start[position[pair]]), int(victims[owner[pair]])
                match[pair] = rank_of[runs.qos.codes[c], runs.partition.codes[c]] > \
                    rank_of[runs.qos.codes[v], runs.partition.codes[v]]
        chosen = np.flatnonzero(match)
        if not chosen.size:
            continue
        distance = np.abs(start_sorted[position[chosen]] - ends[owner[chosen]])
        chosen = chosen[np.lexsort((distance, owner[chosen]))]
        firsts = np.unique(owner[chosen], return_index=True)[1]  # the closest per victim
        best[owner[chosen[firsts]]] = by_start[position[chosen[firsts]]]
    return best


def _expand(node_list: str) -> list[str]:
    try:
        return hostlist.expand(node_list)
    except Exception:  # noqa: BLE001 - a node list python-hostlist cannot read names no node
        return []


def node_names(runs: Runs, rows: np.ndarray) -> list[str]:
    return [name for row in rows.tolist() for name in _expand(runs.node_list[row])]


def node_failure_table(result: Goodput, node_events=None) -> list[dict]:
    """Nodes by NODE_FAIL runs they were in (single ranges counted as arrays, other
    lists expanded) and restarts inside the allocation they caused; with slurmdbd's
    node events, the NODE_FAIL runs blamed on each node (``topology.health.blamed_by``)."""
    runs = result.runs
    failed = result.r_last[np.flatnonzero(runs.state.mask({"NODE_FAIL"})[result.r_last])]
    appearances = _node_counts(runs, failed)
    blamed: Counter[str] = Counter()
    for row in failed.tolist() if node_events else ():
        start, end = int(runs.start[row]), int(runs.end[row])
        blamed.update(name for name in _expand(runs.node_list[row])
                      if blamed_by(node_events.get(name, ()), start, end))
    inplace = Counter(name for items in result.r_restarts.values() for item in items
                      for name in item["dead_nodes"])
    rows = [{"node": node, "node_fail_runs": appearances.get(node, 0),
             "blamed_failures": blamed.get(node, 0) if node_events else None,
             "inplace_restarts": inplace.get(node, 0)}
            for node in set(appearances) | set(inplace)]
    return sorted(rows, key=lambda row: (-(row["blamed_failures"] or 0) - row["inplace_restarts"],
                                         -row["node_fail_runs"], row["node"]))


def _node_counts(runs: Runs, rows: np.ndarray) -> dict[str, int]:
    """How many of the records ``rows`` each node is in: single ranges with a
    difference array per (prefix, zero-padded width), other node lists expanded."""
    counts: dict[str, int] = defaultdict(int)
    for (prefix, digits), mine in _single_range_groups(runs, rows[runs.node_first[rows] >= 0]):
        offset, per_node = _coverage(runs.node_first[mine], runs.node_last[mine])
        for number in np.flatnonzero(per_node).tolist():
            counts[f"{prefix}{number + offset:0{digits}d}"] += int(per_node[number])
    for name in node_names(runs, rows[runs.node_first[rows] < 0]):
        counts[name] += 1
    return counts


def _first_number(expression: str) -> str:
    digits = expression.rstrip("]").split("[")[-1].split("-")[0] if "[" in expression else ""
    return digits if digits.isdigit() else expression[len(expression.rstrip("0123456789")):]


def cluster_node_count(runs: Runs) -> int:
    """Distinct host names: single ranges per (prefix, padded width), numbers as wide as
    the padding pooled per prefix (c[08-12], c[8-12] share c10-c12); other names if new."""
    rows = np.flatnonzero(runs.node_first >= 0)
    numbers: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for (prefix, digits), mine in _single_range_groups(runs, rows):
        offset, per_node = _coverage(runs.node_first[mine], runs.node_last[mine])
        held = np.flatnonzero(per_node) + offset
        padded = (held < 10 ** (digits - 1)) & (digits > 1)  # written with a leading 0
        numbers[(prefix, digits)].append(held[padded])
        numbers[(prefix, 0)].append(held[~padded])
    present = {key: set(np.concatenate(parts).tolist()) for key, parts in numbers.items()}
    listed = set(node_names(runs, np.flatnonzero((runs.node_first < 0)
                                                 & runs.node_list.mask(bool))))
    return sum(map(len, present.values())) + sum(not _held(name, present) for name in listed)


def _single_range_groups(runs: Runs, rows: np.ndarray):
    """(prefix, zero-padded width) and the rows of ``rows`` (single ranges) with them."""
    codes, inverse = np.unique(runs.node_list.codes[rows], return_inverse=True)
    width = np.array([len(_first_number(runs.node_list.values[code])) for code in codes.tolist()],
                     np.int64)[inverse]
    groups = runs.node_prefix.codes[rows].astype(np.int64) * 64 + np.minimum(width, 63)
    for group in np.unique(groups).tolist():
        yield (runs.node_prefix.values[group // 64], group % 64), rows[groups == group]


def _held(name: str, present: dict[tuple[str, int], set[int]]) -> bool:
    """Whether a single range counted ``name``: every split of its trailing digits (a
    prefix may end in one: ``n1[0-3]`` holds ``n12``); a leading 0 fixes the width."""
    digits = len(name) - len(name.rstrip("0123456789"))
    for cut in range(len(name) - digits, len(name)):
        number = name[cut:]
        width = len(number) if len(number) > 1 and number[0] == "0" else 0
        if int(number) in present.get((name[:cut], width), ()):
            return True
    return False


def _coverage(first: np.ndarray, last: np.ndarray) -> tuple[int, np.ndarray]:
    """(offset, per number from offset: how many of the ranges first..last hold it),
    through a difference array."""
    offset = int(first.min())
    diff = np.zeros(int(last.max()) - offset + 2, np.int64)
    np.add.at(diff, first - offset, 1)
    np.add.at(diff, last - offset + 1, -1)
    return offset, np.cumsum(diff)[:-1]


def totals(result: Goodput, groups: Text, keep_empty: bool = False) -> dict[str, dict]:
    """Totals per group value (one bincount per quantity); values without jobs only
    with ``keep_empty``."""
    size = max(len(groups.values), 1)
    count = lambda weights=None: np.bincount(groups.codes, weights=weights, minlength=size)  # noqa: E731
    gpus = np.maximum(result.c_gpus, 0).astype(float)
    jobs = count()
    wall, productive = count(result.c_wallclock), count(result.c_productive)
    gpu_wall, gpu_productive = count(gpus * result.c_wallclock), count(gpus * result.c_productive)
    runs_per_job = (result.c_last - result.c_first + 1).astype(float)
    run_counts = count(runs_per_job)
    sums = {key: count(getattr(result, f"c_{name}").astype(float)) for key, name in COUNTS.items()}
    requeues = count(runs_per_job - 1)
    gpu_hours = np.bincount(groups.codes[result.r_chain], weights=result.r_gpu_s,
                            minlength=size) / 3600 if len(result.r_chain) else np.zeros(size)
    buckets = [count(result.c_buckets[:, i]) for i in range(len(BUCKETS))]
    gpu_buckets = [count(gpus * result.c_buckets[:, i]) for i in range(len(BUCKETS))]
    out = {}
    for code, name in enumerate(groups.values):
        if not jobs[code] and not keep_empty:
            continue
        out[name] = {
            "jobs": int(jobs[code]), "runs": int(run_counts[code]),
            "requeues": int(requeues[code]), **{key: int(sums[key][code]) for key in COUNTS},
            "ettr": round(productive[code] / wall[code], 4) if wall[code] else None,
            "gpu_weighted_ettr": round(gpu_productive[code] / gpu_wall[code], 4)
            if gpu_wall[code] else None,
            "wallclock_h": round(wall[code] / 3600, 3),
            "productive_h": round(productive[code] / 3600, 3),
            "gpu_hours": round(float(gpu_hours[code]), 3),
            "gpu_wallclock_hours": round(gpu_wall[code] / 3600, 3),
            "productive_gpu_hours": round(gpu_productive[code] / 3600, 3),
            "badput_h": {b: round(buckets[i][code] / 3600, 3) for i, b in enumerate(BUCKETS)},
            "badput_gpu_hours": {b: round(gpu_buckets[i][code] / 3600, 3)
                                 for i, b in enumerate(BUCKETS)},
        }
    return out


def preemption_cost(result: Goodput) -> list[dict]:
    """Who preempted whom: per (preemptor queue and class, victim queue and class), the
    preemptions and the victim's GPU-hours lost (lost work + wait until it ran again)."""
    runs = result.runs
    pool = result.preemptor_runs
    classes = tuple(sorted(set(result.c_class.values)))
    victims = np.flatnonzero(result.r_preemptor >= 0)
    if not victims.size:
        return []
    preemptor, chain = result.r_preemptor[victims], result.r_chain[victims]
    following = np.minimum(victims + 1, result.r_queue.size - 1)
    wait = np.where(victims + 1 <= result.c_last[chain], result.r_queue[following], 0.0)
    hours = result.r_gpus[victims].astype(float) * (result.r_split[victims, B["preemption"]]
                                                    + wait) / 3600
    kind = classes_of(pool, preemptor, classes)  # the preemptor's, from its own record
    keys = np.stack((pool.account.codes[preemptor], kind.codes,
                     runs.account.codes[result.r_last[victims]], result.c_class.codes[chain]), 1)
    distinct, first, pair = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    pair = pair.reshape(-1)
    counts = np.bincount(pair, minlength=len(distinct))
    sums = np.bincount(pair, weights=hours, minlength=len(distinct))
    rows = [{"preemptor_queue": pool.account.values[k[0]], "preemptor_class": kind.values[k[1]],
             "victim_queue": runs.account.values[k[2]], "victim_class": result.c_class.values[k[3]],
             "preemptions": int(counts[i]), "gpu_hours_lost": round(float(sums[i]), 3)}
            for i, k in ((i, distinct[i].tolist()) for i in np.argsort(first).tolist())]
    return sorted(rows, key=lambda row: -row["gpu_hours_lost"])  # ties: first seen first


def utilisation(result: Goodput, capacity: int, start: int, end: int, bins: int = 48) -> dict:
    """GPU use by class per time bin, as fractions of capacity: each record adds to the
    bins it spans (one vector pass per bin offset)."""
    runs = result.runs
    width = max(1.0, (end - start) / bins)
    used = np.flatnonzero((runs.start > 0) & (runs.gpus > 0))
    record_chain = np.repeat(result.r_chain, result.r_last - result.r_first + 1)
    run_start = runs.start[used].astype(float)
    run_end = np.where(runs.end[used] > 0, runs.end[used], end).astype(float)
    gpus = runs.gpus[used].astype(float)
    group = result.c_class.codes[record_chain[used]]
    first = np.clip(((run_start - start) // width).astype(np.int64), 0, bins - 1)
    last = np.clip(((run_end - start) // width).astype(np.int64), 0, bins - 1)
    series = np.zeros(len(result.c_class.values) * bins)
    for offset in range(int((last - first).max()) + 1 if used.size else 0):
        rows = np.flatnonzero(first + offset <= last)
        slot = first[rows] + offset
        low = start + slot * width
        overlap = np.clip(np.minimum(run_end[rows], low + width) - np.maximum(run_start[rows], low),
                          0, None)
        np.add.at(series, group[rows] * bins + slot, gpus[rows] * overlap)
    fractions = series.reshape(-1, bins) / (max(capacity, 1) * width)
    return {"start_epoch_s": start, "bin_s": width, "capacity_gpus": capacity,
            "classes": {name: [round(float(v), 4) for v in fractions[code]]
                        for code, name in enumerate(result.c_class.values) if fractions[code].any()},
            "idle": [round(float(v), 4) for v in np.clip(1 - fractions.sum(axis=0), 0, None)]}


def expected_ettr(job_id: str, nodes: int, measured: float | None, *, failures_per_node_day: float,
                  restart_s: float, interval_s: float | None, write_s: float | None) -> dict:
    """The expected-ETTR model beside the measured one, and the optimal interval:
    E[ETTR] = (1 - N r_f (u0 + dt/2)) / (1 + w / dt); dt* = sqrt(2 w MTTF)."""
    nodes = max(nodes, 1)
    mttf_days = 1 / (nodes * failures_per_node_day) if failures_per_node_day > 0 else math.inf
    result = {"job_id": job_id, "nodes": nodes,
              "measured_ettr": None if measured is None else round(measured, 4),
              "mttf_h": None if math.isinf(mttf_days) else round(mttf_days * 24, 2)}
    if write_s and not math.isinf(mttf_days):
        result["optimal_interval_s"] = round(math.sqrt(2 * write_s * mttf_days * 86400), 1)
    if interval_s and write_s is not None:
        u0, dt = restart_s / 86400, interval_s / 86400
        result["expected_ettr"] = round((1 - nodes * failures_per_node_day * (u0 + dt / 2))
                                        / (1 + write_s / interval_s), 4)
        result["checkpoint_interval_s"] = round(interval_s, 1)
        result["checkpoint_write_s"] = round(write_s, 3)
    return result


def checkpoint_interval(job: JobEvents | None) -> tuple[float | None, float | None]:
    """(median seconds between periodic checkpoints, median write seconds) of a job."""
    intervals, writes = [], []
    for run in (job.runs.values() if job else ()):
        times = sorted(at for at, _ in run.periodic)
        intervals += [b - a for a, b in zip(times, times[1:], strict=False)]
        writes += [write for _, write in run.periodic]
    return (statistics.median(intervals) if intervals else None,
            statistics.median(writes) if writes else None)

