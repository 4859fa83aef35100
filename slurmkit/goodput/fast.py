"""Vectorized goodput over a RunTable: the same buckets as ``metrics.chain_metrics``
for every job at once (a unit test holds the two to the same numbers), aggregates by
queue and class with ``bincount``, utilisation bins, node failures from ranges, and
the preemption attribution through a (node block, start time) index."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from slurmkit.goodput import metrics, nodes
from slurmkit.goodput.table import RunTable
from slurmkit.topology.health import blamed_by

_FINAL_FAILURES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
BUCKET_INDEX = {name: index for index, name in enumerate(metrics.BUCKETS)}


@dataclass
class Chains:
    """Per-job arrays (index = chain), plus the run -> chain map."""

    first: np.ndarray  # index of each chain's first run
    last: np.ndarray
    chain_of_run: np.ndarray
    eligible: np.ndarray
    end: np.ndarray
    wallclock: np.ndarray
    productive: np.ndarray
    buckets: np.ndarray  # (chains, len(BUCKETS))
    node_failures: np.ndarray
    preemptions: np.ndarray
    gpus: np.ndarray
    nodes: np.ndarray
    account: np.ndarray  # codes into table.accounts
    job_class: np.ndarray  # codes into ``classes``
    classes: list[str]

    def __len__(self) -> int:
        return int(self.first.size)


def _mask(table: RunTable, names) -> np.ndarray:
    wanted = np.array([name in names for name in table.states] or [False])
    return wanted[table.state] if len(table) else np.zeros(0, dtype=bool)


def compute_chains(table: RunTable, *, now: int, classes=()) -> Chains:
    n = len(table)
    job = table.job_id
    first_mask = np.ones(n, dtype=bool)
    first_mask[1:] = job[1:] != job[:-1]
    last_mask = np.ones(n, dtype=bool)
    last_mask[:-1] = job[:-1] != job[1:]
    first = np.flatnonzero(first_mask)
    last = np.flatnonzero(last_mask)
    chain_of_run = np.cumsum(first_mask) - 1
    chains = first.size
    start, end, eligible_runs = table.start, table.end, table.eligible

    eligible = np.where(eligible_runs[first] > 0, eligible_runs[first],
                        np.where(table.submit[first] > 0, table.submit[first], start[first]))
    active = _mask(table, metrics.ACTIVE)
    last_end = end[last]
    chain_end = np.where(last_end > 0, last_end,
                         np.where(active[last] | (start[last] > 0), now, 0))
    end_or_now = np.where(chain_end > 0, chain_end, now)
    eligible_or_now = np.where(eligible > 0, eligible, now)
    wallclock = np.maximum(0, end_or_now - eligible_or_now).astype(np.float64)

    buckets = np.zeros((chains, len(metrics.BUCKETS)))
    # The first run's queue (or the whole wait, if it never started).
    started_first = start[first] > 0
    initial = np.where(started_first, np.maximum(0, start[first] - eligible),
                       np.maximum(0, end_or_now - eligible))
    initial = np.where(eligible > 0, initial, 0)
    buckets[:, BUCKET_INDEX["initial_queue"]] = initial
    # Waits between runs.
    later = np.flatnonzero(~first_mask)
    previous = later - 1
    chain_end_of_run = chain_end[chain_of_run]
    has_prev_end = end[previous] > 0
    next_start = np.where(start[later] > 0, start[later],
                          np.where(chain_end_of_run[later] > 0, chain_end_of_run[later], now))
    wait = np.where(has_prev_end, np.maximum(0, next_start - end[previous]), 0)
    preempted = _mask(table, ("PREEMPTED",))
    wait_bucket = np.where(preempted[previous], BUCKET_INDEX["preemption"],
                           BUCKET_INDEX["queue_after_requeue"])
    np.add.at(buckets, (chain_of_run[later], wait_bucket), wait)
    # Interrupted runs: without events, everything they did is lost.
    run_end = np.where(end > 0, end, chain_end_of_run)
    ran = (start > 0) & (run_end > 0)
    elapsed = np.where(ran, np.maximum(0, run_end - start), 0)
    interrupted = _mask(table, metrics.INTERRUPTED)
    final_failure = _mask(table, _FINAL_FAILURES)
    lost = ran & (~last_mask | (interrupted & ~final_failure))
    lost_bucket = np.where(preempted, BUCKET_INDEX["preemption"], BUCKET_INDEX["lost_work"])
    np.add.at(buckets, (chain_of_run[lost], lost_bucket[lost]), elapsed[lost])

    productive = np.maximum(0.0, wallclock - buckets.sum(axis=1))
    node_fail = _mask(table, ("NODE_FAIL",))
    class_names = list(dict.fromkeys(
        metrics.classify(_ClassProbe(q, p), classes) for q in table.qoses for p in table.partitions))
    class_code = {name: index for index, name in enumerate(class_names)}
    pair_class = np.array([[class_code[metrics.classify(_ClassProbe(q, p), classes)]
                            for p in table.partitions] for q in table.qoses] or [[0]],
                          dtype=np.int32)
    return Chains(
        first=first, last=last, chain_of_run=chain_of_run, eligible=eligible,
        end=chain_end, wallclock=wallclock, productive=productive, buckets=buckets,
        node_failures=np.bincount(chain_of_run, weights=node_fail, minlength=chains).astype(int),
        preemptions=np.bincount(chain_of_run, weights=preempted, minlength=chains).astype(int),
        gpus=np.maximum.reduceat(table.gpus, first) if n else np.zeros(0, dtype=np.int64),
        nodes=np.maximum.reduceat(table.nodes, first) if n else np.zeros(0, dtype=np.int32),
        account=table.account[last],
        job_class=pair_class[table.qos[last], table.partition[last]] if n else np.zeros(0, int),
        classes=class_names)


class _ClassProbe:
    __slots__ = ("qos", "partition")

    def __init__(self, qos: str, partition: str):
        self.qos, self.partition = qos, partition


def override(chains: Chains, index: int, chain: metrics.ChainMetrics) -> None:
    """Replace one job's vectorized figures with its event-enriched ones."""
    chains.wallclock[index] = chain.wallclock_s
    chains.productive[index] = chain.productive_s
    chains.buckets[index] = [chain.buckets[name] for name in metrics.BUCKETS]
    chains.node_failures[index] = chain.node_failures
    chains.preemptions[index] = chain.preemptions


def totals(chains: Chains, groups: np.ndarray, names: list[str]) -> dict[str, dict]:
    """metrics.Totals.to_dict() for every group code (one bincount per quantity)."""
    size = max(len(names), 1)
    count = lambda weights=None: np.bincount(groups, weights=weights, minlength=size)  # noqa: E731
    gpus = np.maximum(chains.gpus, 0).astype(np.float64)
    jobs = count()
    wall, prod = count(chains.wallclock), count(chains.productive)
    gpu_wall = count(gpus * chains.wallclock) / 3600
    gpu_prod = count(gpus * chains.productive) / 3600
    runs = count((chains.last - chains.first + 1).astype(np.float64))
    failures = count(chains.node_failures.astype(np.float64))
    preemptions = count(chains.preemptions.astype(np.float64))
    bucket_s = [count(chains.buckets[:, i]) for i in range(len(metrics.BUCKETS))]
    bucket_gpu = [count(gpus * chains.buckets[:, i]) / 3600 for i in range(len(metrics.BUCKETS))]
    result = {}
    for code, name in enumerate(names):
        if not jobs[code]:
            continue
        total = metrics.Totals(
            wallclock_s=float(wall[code]), productive_s=float(prod[code]),
            gpu_wallclock_h=float(gpu_wall[code]), gpu_productive_h=float(gpu_prod[code]),
            buckets_s={b: float(bucket_s[i][code]) for i, b in enumerate(metrics.BUCKETS)},
            buckets_gpu_h={b: float(bucket_gpu[i][code]) for i, b in enumerate(metrics.BUCKETS)},
            jobs=int(jobs[code]), runs=int(runs[code]), node_failures=int(failures[code]),
            preemptions=int(preemptions[code]))
        result[name] = total.to_dict()
    return result


def utilisation(table: RunTable, chains: Chains, capacity: int, start: int, end: int,
                bins: int = 48) -> dict:
    """GPU use by class per time bin, as fractions of capacity. Each run adds to the
    bins it spans: one vector pass per bin offset, not per bin."""
    width = max(1.0, (end - start) / bins)
    used = np.flatnonzero((table.start > 0) & (table.gpus > 0))
    run_start = table.start[used].astype(np.float64)
    run_end = np.where(table.end[used] > 0, table.end[used], end).astype(np.float64)
    gpus = table.gpus[used].astype(np.float64)
    run_class = chains.job_class[chains.chain_of_run[used]]
    first_bin = np.clip(((run_start - start) // width).astype(np.int64), 0, bins - 1)
    last_bin = np.clip(((run_end - start) // width).astype(np.int64), 0, bins - 1)
    series = np.zeros(len(chains.classes) * bins)
    span = int((last_bin - first_bin).max()) + 1 if used.size else 0
    for offset in range(span):
        rows = np.flatnonzero(first_bin + offset <= last_bin)
        position = first_bin[rows] + offset
        low = start + position * width
        overlap = np.clip(np.minimum(run_end[rows], low + width) - np.maximum(run_start[rows], low),
                          0, None)
        np.add.at(series, run_class[rows] * bins + position, gpus[rows] * overlap)
    fractions = series.reshape(len(chains.classes), bins) / (max(capacity, 1) * width)
    classes = {name: [round(float(v), 4) for v in fractions[code]]
               for code, name in enumerate(chains.classes) if fractions[code].any()}
    idle = np.clip(1 - fractions.sum(axis=0), 0, None)
    return {"start_epoch_s": start, "bin_s": width, "capacity_gpus": capacity,
            "classes": classes, "idle": [round(float(v), 4) for v in idle]}


def node_failure_table(table: RunTable, node_events=None) -> list[dict]:
    """Nodes by the NODE_FAIL runs they were in (single-range node lists counted with
    difference arrays; the rest one by one); with node DOWN events, also the failures
    blamed on each node."""
    failed = np.flatnonzero(_mask(table, ("NODE_FAIL",)))
    counts: dict[str, int] = defaultdict(int)
    prefix_code, first, last, single = node_range_columns(table)
    digits_of: dict[int, int] = {}
    ranges_by_prefix: dict[int, list[np.ndarray]] = defaultdict(list)
    simple = failed[single[failed]]
    for code in np.unique(prefix_code[simple]) if simple.size else ():
        rows = simple[prefix_code[simple] == code]
        top = int(last[rows].max()) + 2
        diff = np.zeros(top, dtype=np.int64)
        np.add.at(diff, first[rows], 1)
        np.add.at(diff, last[rows] + 1, -1)
        per_node = np.cumsum(diff)
        sample = nodes.ranges(table.node_list[int(rows[0])])
        prefix, digits = (sample[0][0], sample[0][3]) if sample else ("", 0)
        for number in np.flatnonzero(per_node):
            counts[f"{prefix}{number:0{digits}d}"] += int(per_node[number])
    del digits_of, ranges_by_prefix
    for index in failed[~single[failed]]:
        for name in nodes.names(table.node_list[int(index)]):
            counts[name] += 1
    blamed: dict[str, int] = defaultdict(int)
    if node_events:
        for index in failed:
            names = nodes.names(table.node_list[int(index)])
            for name in names:
                if blamed_by(node_events.get(name, ()), int(table.start[index]),
                                     int(table.end[index])):
                    blamed[name] += 1
    rows_out = [{"node": node, "node_fail_runs": count,
                 "blamed_failures": blamed.get(node, 0) if node_events else None}
                for node, count in counts.items()]
    return sorted(rows_out, key=lambda r: (-(r["blamed_failures"] or 0), -r["node_fail_runs"],
                                           r["node"]))


_SINGLE_RANGE = re.compile(r"^([^\[\],]*?)(?:\[(\d+)(?:-(\d+))?\]|(\d+))$")


def node_range_columns(table: RunTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(prefix code, first, last, single) per run: the node list as one numeric range
    when it is one (``gpu[00010-00073]``, ``c7``); ``single`` False otherwise."""
    if table.node_columns is not None:
        return table.node_columns
    cache: dict[str, tuple[int, int, int, bool]] = {}
    prefixes: dict[str, int] = {}
    n = len(table)
    prefix = np.zeros(n, dtype=np.int32)
    low = np.zeros(n, dtype=np.int64)
    high = np.zeros(n, dtype=np.int64)
    single = np.zeros(n, dtype=bool)
    for index, expression in enumerate(table.node_list):
        entry = cache.get(expression)
        if entry is None:
            match = _SINGLE_RANGE.match(expression)
            if match:
                first = int(match[2] or match[4])
                entry = (prefixes.setdefault(match[1], len(prefixes)), first,
                         int(match[3] or first), True)
            else:
                entry = (-1, 0, -1, False)
            if len(cache) < 1_000_000:
                cache[expression] = entry
        prefix[index], low[index], high[index], single[index] = entry
    return prefix, low, high, single


def preemption_attribution(table: RunTable, chains: Chains, spurious: set[int] = frozenset(),
                           lost_override: dict[int, float] | None = None,
                           window_s: int = 60, batch: int = 20_000) -> list[dict]:
    """Who preempted whom: each real preemption goes to the run that started on the
    victim's nodes closest to the victim's end (within ``window_s``); GPU-hours lost =
    the victim's GPUs x (lost work + its wait until it ran again). Pairs are found with
    array operations, in batches of victims; node lists with several ranges are
    compared exactly, one by one."""
    lost_override = lost_override or {}
    preempted = _mask(table, ("PREEMPTED",)) & (table.end > 0)
    victims = np.array([i for i in np.flatnonzero(preempted) if int(i) not in spurious],
                       dtype=np.int64)
    if victims.size == 0:
        return []
    prefix, low, high, single = node_range_columns(table)
    started = np.flatnonzero(table.start > 0)
    by_start = started[np.argsort(table.start[started], kind="stable")]
    start_sorted = table.start[by_start]
    ends = table.end[victims]
    # The preemptor starts once the victim's nodes are free: right after its end.
    first = np.searchsorted(start_sorted, ends - 5, side="left")
    last = np.searchsorted(start_sorted, ends + window_s, side="right")
    best = np.full(victims.size, -1, dtype=np.int64)
    for offset in range(0, victims.size, batch):
        v = slice(offset, offset + batch)
        counts = last[v] - first[v]
        total = int(counts.sum())
        if total == 0:
            continue
        owner = np.repeat(np.arange(offset, offset + counts.size), counts)
        base = np.repeat(np.cumsum(counts) - counts, counts)
        position = np.arange(total) - base + np.repeat(first[v], counts)
        candidate = by_start[position]
        victim = victims[owner]
        both_single = single[victim] & single[candidate]
        matches = (table.job_id[candidate] != table.job_id[victim]) & (
            both_single & (prefix[candidate] == prefix[victim]) & (low[candidate] <= high[victim])
            & (low[victim] <= high[candidate]))
        # Node lists with several ranges: the exact comparison, in Python (rare).
        for pair in np.flatnonzero(~both_single & (table.job_id[candidate] != table.job_id[victim])):
            matches[pair] = nodes.overlap(nodes.ranges(table.node_list[victim[pair]]),
                                          nodes.ranges(table.node_list[candidate[pair]]))
        if not matches.any():
            continue
        distance = np.abs(table.start[candidate] - table.end[victim])
        chosen = np.flatnonzero(matches)
        order = np.lexsort((distance[chosen], owner[chosen]))
        chosen = chosen[order]
        firsts = np.ones(chosen.size, dtype=bool)
        firsts[1:] = owner[chosen][1:] != owner[chosen][:-1]
        best[owner[chosen[firsts]]] = candidate[chosen[firsts]]
    # Cost of each preemption, then totals per (preemptor, victim) pair of queue/class.
    following = victims + 1
    has_next = following < len(table)
    has_next[has_next] &= table.job_id[following[has_next]] == table.job_id[victims[has_next]]
    chain = chains.chain_of_run[victims]
    resume = np.where(has_next, table.start[np.minimum(following, len(table) - 1)], 0)
    resume = np.where((resume == 0) & has_next, chains.end[chain], resume)
    wait = np.where(has_next & (resume > 0), np.maximum(0, resume - ends), 0).astype(np.float64)
    lost = np.where(table.start[victims] > 0, np.maximum(0, ends - table.start[victims]), 0)
    lost = lost.astype(np.float64)
    for position, victim in enumerate(victims):
        if int(victim) in lost_override:
            lost[position] = lost_override[int(victim)]
    gpu_hours = table.gpus[victims] * (lost + wait) / 3600
    pairs: dict[tuple, list] = {}
    for position, victim in enumerate(victims):
        preemptor = int(best[position])
        if preemptor < 0:
            key = ("(unknown)", "(unknown)")
        else:
            partition = table.partitions[table.partition[preemptor]]
            key = (table.accounts[table.account[preemptor]],
                   partition[7:] if partition.startswith("borrow-")
                   else table.qoses[table.qos[preemptor]] or "unknown")
        key = (*key, table.accounts[table.account[victim]],
               chains.classes[chains.job_class[chain[position]]])
        entry = pairs.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += float(gpu_hours[position])
    rows = [{"preemptor_queue": k[0], "preemptor_class": k[1], "victim_queue": k[2],
             "victim_class": k[3], "preemptions": count, "gpu_hours_lost": round(hours, 3)}
            for k, (count, hours) in pairs.items()]
    return sorted(rows, key=lambda r: -r["gpu_hours_lost"])
