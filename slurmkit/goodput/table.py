"""Runs as columns (NumPy arrays sorted by job and run), parsed on every core.

A million sacct rows are parsed by ``os.cpu_count()`` processes, each taking a byte
range of the dump (cut at row starts) and returning arrays plus the few string columns;
the parent concatenates and sorts them. Metrics over the columns are vectorized
(``slurmkit.goodput.fast``); per-job detail still goes through ``metrics.chain_metrics``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from slurmkit.goodput import ingest
from slurmkit.goodput.ingest import IngestStats, Run

_ROW_START = re.compile(rb"^\d+(?:\.[A-Za-z0-9_-]+)?\|")
PARALLEL_MIN_BYTES = 8 << 20  # below this, one process is faster than forking


@dataclass
class RunTable:
    job_id: np.ndarray
    restarts: np.ndarray
    state: np.ndarray  # codes into ``states``
    account: np.ndarray  # codes into ``accounts``
    partition: np.ndarray
    qos: np.ndarray
    submit: np.ndarray  # epoch seconds, 0 = none
    eligible: np.ndarray
    start: np.ndarray
    end: np.ndarray
    elapsed: np.ndarray
    nodes: np.ndarray
    gpus: np.ndarray
    name: np.ndarray  # object arrays of str
    display_id: np.ndarray
    user: np.ndarray
    node_list: np.ndarray
    exit_code: np.ndarray
    states: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    qoses: list[str] = field(default_factory=list)
    #: (prefix code, first, last, single) per run, when the parser computed them.
    node_columns: tuple | None = None

    def __len__(self) -> int:
        return int(self.job_id.size)

    def run(self, index: int) -> Run:
        none = lambda value: int(value) or None  # noqa: E731
        return Run(int(self.job_id[index]), self.display_id[index], self.name[index],
                   self.user[index], self.accounts[self.account[index]],
                   self.partitions[self.partition[index]], self.qoses[self.qos[index]],
                   self.states[self.state[index]], int(self.restarts[index]),
                   none(self.submit[index]), none(self.eligible[index]),
                   none(self.start[index]), none(self.end[index]), int(self.elapsed[index]),
                   int(self.nodes[index]), self.node_list[index], int(self.gpus[index]),
                   self.exit_code[index])

    def runs(self) -> Iterable[Run]:
        return (self.run(index) for index in range(len(self)))


def from_runs(runs: Iterable[Run], *, sort: bool = True) -> RunTable:
    """Columns from Run tuples (sorted by job, then run, unless ``sort`` is False).
    Transposed with ``zip(*runs)`` (C-level); string columns become object arrays so
    that sorting and selecting them is NumPy indexing, not Python loops."""
    runs = list(runs)
    if not runs:
        empty_int = np.zeros(0, dtype=np.int64)
        empty_obj = np.zeros(0, dtype=object)
        return RunTable(*([empty_int] * 13), *([empty_obj] * 5))
    columns = list(zip(*runs, strict=True))
    (job_id, display_id, name, user, account, partition, qos, state, restarts, submit,
     eligible, start, end, elapsed, node_count, node_list, gpus, exit_code) = columns

    def codes(values) -> tuple[np.ndarray, list[str]]:
        table: dict[str, int] = {}
        array = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int32,
                            count=len(values))
        return array, list(table)

    def times(values) -> np.ndarray:
        return np.array([v or 0 for v in values], dtype=np.int64)

    state_codes, states = codes(state)
    account_codes, accounts = codes(account)
    partition_codes, partitions = codes(partition)
    qos_codes, qoses = codes(qos)
    objects = lambda values: np.array(values, dtype=object)  # noqa: E731
    table = RunTable(
        job_id=np.array(job_id, dtype=np.int64), restarts=np.array(restarts, dtype=np.int32),
        state=state_codes, account=account_codes, partition=partition_codes, qos=qos_codes,
        submit=times(submit), eligible=times(eligible), start=times(start), end=times(end),
        elapsed=np.array(elapsed, dtype=np.int64), nodes=np.array(node_count, dtype=np.int32),
        gpus=np.array(gpus, dtype=np.int64), name=objects(name), display_id=objects(display_id),
        user=objects(user), node_list=objects(node_list), exit_code=objects(exit_code),
        states=states, accounts=accounts, partitions=partitions, qoses=qoses)
    if sort:
        table = _reorder(table, np.lexsort((table.start, table.restarts, table.job_id)))
    return table


def drop_superseded(table: RunTable) -> tuple[RunTable, int]:
    """Without the records of runs that never started and that a later record of the
    same job supersedes; how many were dropped.

    Slurm leaves such a record behind when slurmctld restarts while a requeued job is
    pending: the job gets a new database record, and the old one stays PENDING forever
    (seen in the fault campaign: ``1:PENDING`` then ``1:COMPLETED``). Counted as a run,
    it would hold the rest of the chain as queue time. A run that never started loses
    nothing by going: the next run's queue time starts at the previous run's end."""
    if len(table) < 2:
        return table, 0
    # Sorted by job, run, start: a never-started record comes first among its run's.
    followed = np.zeros(len(table), dtype=bool)
    followed[:-1] = table.job_id[:-1] == table.job_id[1:]
    stale = followed & (table.start == 0)
    dropped = int(stale.sum())
    if not dropped:
        return table, 0
    return _reorder(table, np.flatnonzero(~stale)), dropped


def _reorder(table: RunTable, order: np.ndarray) -> RunTable:
    fields = {name: getattr(table, name)[order] for name in (
        "job_id", "restarts", "state", "account", "partition", "qos", "submit", "eligible",
        "start", "end", "elapsed", "nodes", "gpus", "name", "display_id", "user", "node_list",
        "exit_code")}
    node_columns = tuple(column[order] for column in table.node_columns) \
        if table.node_columns is not None else None
    return RunTable(**fields, states=table.states, accounts=table.accounts,
                    partitions=table.partitions, qoses=table.qoses, node_columns=node_columns)


def _chunk_bounds(path: str, parts: int) -> list[tuple[int, int]]:
    """Byte ranges that start at row starts (after the header line)."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header_end = len(stream.readline())
        cuts = [header_end]
        for part in range(1, parts):
            stream.seek(header_end + (size - header_end) * part // parts)
            stream.readline()  # finish the line we landed in
            while True:
                position = stream.tell()
                line = stream.readline()
                if not line or _ROW_START.match(line):
                    break
            cuts.append(position)
        cuts.append(size)
    return [(low, high) for low, high in zip(cuts, cuts[1:], strict=False) if high > low]


def _parse_range(path: str, header: tuple[str, ...], low: int, high: int
                 ) -> tuple[RunTable, IngestStats]:
    stats = IngestStats()
    with open(path, "rb") as stream:
        stream.seek(low)
        data = stream.read(high - low).decode("utf-8", errors="replace")
    return parse_columns(data.split("\n") if data else [], header, stats), stats


def merge(tables: list[RunTable]) -> RunTable:
    """Concatenate tables (remapping their string codes) and sort by job, run."""
    tables = [t for t in tables if len(t)] or tables[:1]
    if len(tables) == 1:
        table = tables[0]
        return _reorder(table, np.lexsort((table.start, table.restarts, table.job_id)))
    merged: dict[str, dict[str, int]] = {kind: {} for kind in ("states", "accounts",
                                                               "partitions", "qoses")}
    remapped: dict[str, list[np.ndarray]] = {"state": [], "account": [], "partition": [],
                                             "qos": []}
    for table in tables:
        for kind, attribute in (("states", "state"), ("accounts", "account"),
                                ("partitions", "partition"), ("qoses", "qos")):
            mapping = merged[kind]
            remap = np.array([mapping.setdefault(value, len(mapping))
                              for value in getattr(table, kind)], dtype=np.int32)
            remapped[attribute].append(remap[getattr(table, attribute)])
    concat = lambda name: np.concatenate([getattr(t, name) for t in tables])  # noqa: E731
    joined = RunTable(
        job_id=concat("job_id"), restarts=concat("restarts"),
        state=np.concatenate(remapped["state"]), account=np.concatenate(remapped["account"]),
        partition=np.concatenate(remapped["partition"]), qos=np.concatenate(remapped["qos"]),
        submit=concat("submit"), eligible=concat("eligible"), start=concat("start"),
        end=concat("end"), elapsed=concat("elapsed"), nodes=concat("nodes"), gpus=concat("gpus"),
        name=concat("name"), display_id=concat("display_id"), user=concat("user"),
        node_list=concat("node_list"), exit_code=concat("exit_code"),
        states=list(merged["states"]), accounts=list(merged["accounts"]),
        partitions=list(merged["partitions"]), qoses=list(merged["qoses"]))
    return _reorder(joined, np.lexsort((joined.start, joined.restarts, joined.job_id)))


def parse_bytes(data: bytes, header: tuple[str, ...], stats: IngestStats) -> RunTable:
    """``sacct -P`` output (no header line) as a sorted RunTable: the vectorized parser
    when the columns suit it, else the row parser."""
    from slurmkit.goodput import fastparse

    table = fastparse.parse(data, header, stats)
    if table is None:
        text = data.decode("utf-8", "replace")
        table = from_runs(ingest.parse_parsable2(text.split("\n"), header, stats=stats),
                          sort=False)
    return _reorder(table, np.lexsort((table.start, table.restarts, table.job_id)))


def read_table(path: str, *, stats: IngestStats, workers: int | None = None) -> RunTable:
    """A parsable2 dump (with its header) as a RunTable, parsed on every core."""
    with open(path, encoding="utf-8", errors="replace") as stream:
        first = stream.read(1)
    if first == "{":
        return from_runs(ingest.read_input(path, stats=stats))
    with open(path, "rb") as stream:
        header_line = stream.readline()
        header = tuple(name.strip() for name in header_line.decode("utf-8", "replace")
                       .rstrip("\n").split("|"))
        from slurmkit.goodput import fastparse

        fast_table = fastparse.parse(stream.read(), header, stats)
    if fast_table is not None:
        return _reorder(fast_table, np.lexsort((fast_table.start, fast_table.restarts,
                                                fast_table.job_id)))
    workers = workers or os.cpu_count() or 1
    if workers == 1 or os.path.getsize(path) < PARALLEL_MIN_BYTES:
        with open(path, encoding="utf-8", errors="replace", newline="") as stream:
            stream.readline()
            return merge([parse_columns(stream.read().split("\n"), header, stats)])
    bounds = _chunk_bounds(path, workers)
    context = multiprocessing.get_context("fork")
    with context.Pool(len(bounds)) as pool:
        results = pool.starmap(_parse_range, [(path, header, low, high) for low, high in bounds])
    for _, part in results:
        stats.absorb(part)
    return merge([table for table, _ in results])


# ------------------------------------------------------------------ columnar parser

def parse_columns(lines: list[str], header: tuple[str, ...], stats: IngestStats) -> RunTable:
    with _no_gc():
        return _parse_columns(lines, header, stats)


class _no_gc:
    """Millions of small lists and tuples would trigger the cycle collector over and
    over (each pass scanning all of them): it is paused while parsing; nothing here
    makes reference cycles."""

    def __enter__(self):
        import gc

        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        import gc

        if self.enabled:
            gc.enable()


def _parse_columns(lines: list[str], header: tuple[str, ...], stats: IngestStats) -> RunTable:
    """``sacct -P`` lines straight into columns: one ``split`` per line, a transpose
    (``zip``), then NumPy converts whole columns. The same rules as
    ``ingest.parse_parsable2`` (a newline in a JobName continues the row; a row cut
    short is counted; step rows are skipped), at a fraction of the cost per row."""
    width = len(header)
    index = {name: position for position, name in enumerate(header)}
    missing = [name for name in ingest.REQUIRED if name not in index]
    if missing:
        from slurmkit.errors import ParseError

        raise ParseError("sacct --parsable2 header", f"missing columns {', '.join(missing)}")
    name_last = header[-1] == "JobName"
    stats.rows += len(lines)
    # One split per line (a list comprehension: the cheapest loop Python has); the rare
    # odd lines (a newline inside a JobName, a row cut short) are fixed up afterwards.
    rows = [line.split("|", width - 1) for line in lines]
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    odd = np.flatnonzero(lengths != width)
    if odd.size:
        drop = set()
        last_short = False
        for position in odd:
            position = int(position)
            line = lines[position].rstrip("\n")
            drop.add(position)
            if not line:
                continue
            if _ROW_START_TEXT.match(line):
                stats.malformed += 1
                last_short = position >= len(rows) - 2
                continue
            target = position - 1
            while target in drop and target >= 0:
                target -= 1
            if name_last and target >= 0:
                rows[target][-1] += "\n" + line
            else:
                stats.malformed += 1
        stats.truncated |= last_short
        rows = [row for position, row in enumerate(rows) if position not in drop]
    if not rows:
        return from_runs([], sort=False)
    columns = list(zip(*rows, strict=True))
    raw = columns[index["JobIDRaw"]]
    is_job = np.fromiter((v.isdigit() for v in raw), dtype=bool, count=len(raw))
    steps = ~is_job & np.fromiter(("." in v for v in raw), dtype=bool, count=len(raw))
    stats.steps_skipped += int(steps.sum())
    stats.malformed += int((~is_job & ~steps).sum())
    keep = np.flatnonzero(is_job)

    def column(name: str, default: str = "") -> np.ndarray:
        if name not in index:
            return np.full(keep.size, default, dtype=object)
        return np.array(columns[index[name]], dtype=object)[keep]

    def integers(name: str, times: bool = False) -> np.ndarray:
        if name not in index:
            return np.zeros(keep.size, dtype=np.int64)
        text = columns[index[name]]
        # -1 marks what is not plain digits ("Unknown", ISO dates, damage).
        values = np.array([int(v) if v.isdigit() else -1 for v in text], dtype=np.int64)[keep]
        odd = np.flatnonzero(values < 0)
        for position in odd:
            original = text[keep[position]]
            values[position] = (ingest._time(original, stats) or 0) if times and original not in \
                ("Unknown", "None", "", "N/A") else 0
        return values

    def codes(name: str) -> tuple[np.ndarray, list[str]]:
        values = column(name)
        table: dict[str, int] = {}
        array = np.fromiter((table.setdefault(v, len(table)) for v in values),
                            dtype=np.int32, count=values.size)
        return array, list(table)

    state_text = column("State")
    first_word = {}
    states_clean = np.array([first_word.setdefault(s, s.split(" ", 1)[0] or "UNKNOWN")
                             for s in state_text], dtype=object)
    state_table: dict[str, int] = {}
    state_codes = np.fromiter((state_table.setdefault(s, len(state_table)) for s in states_clean),
                              dtype=np.int32, count=states_clean.size)
    for state, code in state_table.items():
        if state not in ingest.KNOWN_STATES:
            stats.unknown_states[state] = stats.unknown_states.get(state, 0) + int(
                (state_codes == code).sum())
    tres_cache: dict[str, int] = {}

    def gpus_of(tres: str) -> int:
        value = tres_cache.get(tres)
        if value is None:
            match = ingest._GPU.search(tres)
            value = tres_cache[tres] = int(match[1]) if match else 0
        return value

    account_codes, accounts = codes("Account")
    partition_codes, partitions = codes("Partition")
    qos_codes, qoses = codes("QOS")
    job_id = np.array([int(raw[position]) for position in keep], dtype=np.int64)
    shown = column("JobID")
    if "JobID" not in index:
        shown = np.array([str(v) for v in job_id], dtype=object)
    stats.runs += int(keep.size)
    return RunTable(
        job_id=job_id, restarts=integers("Restarts").astype(np.int32), state=state_codes,
        account=account_codes, partition=partition_codes, qos=qos_codes,
        submit=integers("Submit", True), eligible=integers("Eligible", True),
        start=integers("Start", True), end=integers("End", True),
        elapsed=integers("ElapsedRaw"), nodes=integers("NNodes").astype(np.int32),
        gpus=np.fromiter((gpus_of(t) for t in column("AllocTRES")), dtype=np.int64,
                         count=keep.size),
        name=column("JobName"), display_id=shown, user=column("User"),
        node_list=column("NodeList"), exit_code=column("ExitCode", "0:0"),
        states=list(state_table), accounts=accounts, partitions=partitions, qoses=qoses)


_ROW_START_TEXT = re.compile(r"^\d+(?:\.[A-Za-z0-9_-]+)?\|")
