"""Accounting runs as columns: the one loader of ``slurmkit goodput``.

Each sacct record (one run of one job) becomes a row of ``Runs``: NumPy columns for
numbers and times, and ``Text`` columns (codes into a table of distinct values) for
strings, which repeat over a million runs (users, states, node lists).

- ``sacct --json`` (live reports, and dumps): entries through
  ``slurm.parse.accounting_fields_from_json``; a job name cannot forge a record there.
- ``sacct --parsable2`` dumps with their header line, in any column order: the fast
  path reads whole arrays of bytes (lines and separators located with array searches,
  numbers gathered digit by digit, strings coded through 64-bit hashes). Lines that
  are not plain rows (a newline in a job name, a '|' in a name that is not the last
  column, a row cut short) go through ``slurm.parse.accounting_rows`` and the row
  converter ``_RowBuilder``, which also read whole dumps alone (``fast=False``): the
  fallback. A property test holds both to identical tables. Big dumps are cut at row
  starts and read by worker processes, each reading its own byte range.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime

import numpy as np

from slurmkit.errors import ParseError, UserInputError
from slurmkit.slurm import parse
from slurmkit.slurm.models import JOB_STATES, tres_gpus

#: Columns the report reads (a dump may hold more, in any order).
COLUMNS = ("JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Restarts",
           "Submit", "Eligible", "Start", "End", "NNodes", "NodeList", "AllocTRES",
           "ExitCode", "JobName")
REQUIRED = ("JobIDRaw", "State", "Start", "End")
_TEXT = {"display": "JobID", "name": "JobName", "user": "User", "account": "Account",
         "partition": "Partition", "qos": "QOS", "exit_code": "ExitCode",
         "node_list": "NodeList"}
_TIMES = {"submit": "Submit", "eligible": "Eligible", "start": "Start", "end": "End"}
_COUNTS = {"restarts": "Restarts", "nodes": "NNodes"}
_NO_TIME = ("", "Unknown", "None", "N/A")
_NO_NODES = ("None assigned", "(null)", "None")  # sacct's spellings of "no nodes": ''

_LIMIT = 256  # strings longer than this are coded one by one (in Python), not hashed
_PAD = _LIMIT + 64  # zero bytes after a block: fixed-width windows never run off its end
_BLOCK = 16 << 20  # bytes per task
_MAX_JOB_ID = 2 ** 32


@dataclass
class Text:
    """Strings as codes into ``values``."""

    codes: np.ndarray
    values: list[str]

    def __getitem__(self, index: int) -> str:
        return self.values[self.codes[index]]

    @classmethod
    def of(cls, strings) -> Text:
        table: dict[str, int] = {}
        codes = np.fromiter((table.setdefault(s, len(table)) for s in strings), np.int32)
        return cls(codes, list(table))

    def mask(self, wanted) -> np.ndarray:
        """Rows whose value is in ``wanted`` (a set, or a predicate)."""
        test = wanted if callable(wanted) else wanted.__contains__
        hits = np.array([bool(test(value)) for value in self.values] or [False])
        return hits[self.codes] if self.codes.size else np.zeros(0, bool)


@dataclass
class Runs:
    """One row per run, sorted by job and run after ``merge``. Times are epoch
    seconds, 0 where Slurm has none. ``display`` is the job id sacct shows (``12_3``,
    ``7+1``) where it differs from ``job_id`` (JobIDRaw), else ''. ``node_first`` /
    ``node_last`` / ``node_prefix``: the node list as one numeric range (``gpu[10-73]``)
    when it is one, first = -1 otherwise."""

    job_id: np.ndarray
    restarts: np.ndarray
    submit: np.ndarray
    eligible: np.ndarray
    start: np.ndarray
    end: np.ndarray
    nodes: np.ndarray
    gpus: np.ndarray
    node_first: np.ndarray
    node_last: np.ndarray
    state: Text
    display: Text
    name: Text
    user: Text
    account: Text
    partition: Text
    qos: Text
    exit_code: Text
    node_list: Text
    node_prefix: Text

    def __len__(self) -> int:
        return int(self.job_id.size)

    def take(self, rows: np.ndarray) -> Runs:
        return Runs(**{f.name: (Text(getattr(self, f.name).codes[rows], getattr(self, f.name).values)
                                if f.name in _TEXT_FIELDS else getattr(self, f.name)[rows])
                       for f in fields(self)})

    def shown_id(self, row: int) -> str:
        return self.display[row] or str(int(self.job_id[row]))


_TEXT_FIELDS = tuple(f.name for f in fields(Runs) if f.type == "Text")
_INT_FIELDS = tuple(f.name for f in fields(Runs) if f.type != "Text")  # the ints come first


def concat(parts: list[Runs]) -> Runs:
    """One table from parts, rows in the order given (string codes remapped)."""
    parts = [part for part in parts if len(part)] or parts[:1] or [_RowBuilder().runs()]
    columns: dict = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _INT_FIELDS}
    for name in _TEXT_FIELDS:
        texts = [getattr(part, name) for part in parts]
        distinct = dict.fromkeys(itertools.chain.from_iterable(text.values for text in texts))
        table = dict(zip(distinct, range(len(distinct)), strict=True))
        columns[name] = Text(np.concatenate([np.fromiter(
            map(table.__getitem__, text.values), np.int32, len(text.values))[text.codes]
            if text.values else text.codes for text in texts]), list(table))
    return Runs(**columns)


def merge(parts: list[Runs]) -> Runs:
    """One table from parts (string codes remapped), sorted by job, shown id, run, start."""
    merged = concat(parts)  # once: the comprehension would concatenate per field
    columns = {f.name: getattr(merged, f.name) for f in fields(Runs)}
    # Shown ids in sorted order: codes that order alike however the parts came.
    shown = columns["display"]
    order = sorted(range(len(shown.values)), key=shown.values.__getitem__)
    rank = np.argsort(order).astype(np.int32)
    columns["display"] = Text(rank[shown.codes], [shown.values[i] for i in order])
    runs = Runs(**columns)
    return runs.take(np.lexsort((runs.start, runs.restarts, runs.display.codes, runs.job_id)))


@dataclass
class IngestStats:
    rows: int = 0
    runs: int = 0
    steps_skipped: int = 0
    malformed: int = 0
    unknown_states: Counter[str] = field(default_factory=Counter)
    bad_times: int = 0
    truncated: bool = False
    seconds: float = 0.0
    #: records of a run that never started, left behind by a later record of the same job
    superseded: int = 0

    def absorb(self, part: IngestStats) -> None:
        """Add the counts of a block read apart; ``seconds`` stays the caller's."""
        for name in ("rows", "runs", "steps_skipped", "malformed", "bad_times", "superseded"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.unknown_states.update(part.unknown_states)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "runs": self.runs, "steps_skipped": self.steps_skipped,
                "malformed_rows": self.malformed, "unknown_states": dict(self.unknown_states),
                "unparsable_times": self.bad_times, "truncated_input": self.truncated,
                "superseded_records": self.superseded, "ingest_seconds": round(self.seconds, 3)}


# ----------------------------------------------------------------- one value at a time

def _epoch(text: str, stats: IngestStats) -> int:
    value = parse.ascii_int(text)
    if value is not None:
        return value if value < 4294967294 else 0
    if text in _NO_TIME:
        return 0
    try:  # SLURM_TIME_FORMAT was not %s: ISO 8601, local time of this machine
        value = int(datetime.fromisoformat(text).timestamp())
        return value if 0 < value < 4294967294 else 0
    except (ValueError, OverflowError, OSError):
        stats.bad_times += 1
        return 0


def _count(text: str) -> int:
    value = parse.ascii_int(text, 0)
    return value if value < 2 ** 31 else 0


def node_range(text: str) -> tuple[str, int, int]:
    """(prefix, first, last) when the node list is one numeric range: ``gpu[0010-0073]``,
    ``c[7]`` or ``c7`` (ASCII digits, at most 18, at most 48 bytes in all); else
    ('', -1, -1). The fast path computes the same over whole arrays."""
    if len(text.encode()) > 48 or "," in text:
        return "", -1, -1
    if text.endswith("]"):
        prefix, _, inside = text[:-1].partition("[")
        low, _, high = inside.partition("-")
        if "]" in prefix or not _digits(low) or (inside.count("-") and not _digits(high)):
            return "", -1, -1
        first, last = int(low), int(high or low)
    else:
        if "[" in text or "]" in text:
            return "", -1, -1
        stripped = text.rstrip("0123456789")
        number = text[len(stripped):]
        if not _digits(number):
            return "", -1, -1
        prefix, first, last = stripped, int(number), int(number)
    return (prefix, first, last) if first <= last else ("", -1, -1)


def _digits(text: str) -> bool:
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


class _RowBuilder:
    """Runs from one row at a time: the fallback, the rare odd rows of the fast path,
    and ``sacct --json`` entries."""

    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, job_id, display, name, user, account, partition, qos, state, restarts,
            submit, eligible, start, end, nodes, node_list, gpus, exit_code,
            stats: IngestStats) -> None:
        state = state.split(" ", 1)[0] or "UNKNOWN"
        if state not in JOB_STATES:
            stats.unknown_states[state] += 1
        node_list = "" if node_list in _NO_NODES else node_list
        prefix, first, last = node_range(node_list)
        stats.runs += 1
        self.rows.append((job_id, restarts, submit, eligible, start, end, nodes, gpus, first,
                          last, state, display, name, user,
                          account, partition, qos, exit_code, node_list, prefix))

    def add_fields(self, row: list[str], at: dict[str, int], stats: IngestStats) -> None:
        """One ``--parsable2`` row (its fields, ``at``: column positions)."""
        get = lambda column: row[at[column]] if column in at else ""  # noqa: E731
        raw = get("JobIDRaw")
        job_id = parse.ascii_int(raw)
        if job_id is None or job_id >= _MAX_JOB_ID:
            if "." in raw:
                stats.steps_skipped += 1
            else:
                stats.malformed += 1
            return
        shown = get("JobID")
        self.add(job_id, "" if shown in ("", raw) else shown, get("JobName"), get("User"), get("Account"),
                 get("Partition"), get("QOS"), get("State"), _count(get("Restarts")),
                 *(_epoch(get(column), stats) for column in _TIMES.values()),
                 _count(get("NNodes")), get("NodeList"), _gpus(get("AllocTRES")),
                 get("ExitCode"), stats)

    def runs(self) -> Runs:
        columns = list(zip(*self.rows, strict=True)) or [()] * 20
        ints = {name: np.array(columns[i], dtype=np.int64) for i, name in enumerate(_INT_FIELDS)}
        texts = {name: Text.of(columns[10 + i]) for i, name in enumerate(_TEXT_FIELDS)}
        return Runs(**ints, **texts)


_GPU_CACHE: dict[str, int] = {}


def _gpus(tres_text: str) -> int:
    value = _GPU_CACHE.get(tres_text)
    if value is None:
        value = tres_gpus(parse.tres(tres_text))
        if len(_GPU_CACHE) < 100_000:
            _GPU_CACHE[tres_text] = value
    return value


# ----------------------------------------------------------------- sacct --json

def from_json(text: str | bytes, *, stats: IngestStats, what: str = "sacct --json") -> Runs:
    """Runs from ``sacct --json [-D]``; entries that are not job records are counted."""
    started = time.monotonic()
    payload = parse.load_json(text, what, "jobs")
    builder = _RowBuilder()
    for item in payload["jobs"]:
        stats.rows += 1
        try:
            record = parse.accounting_fields_from_json(item)
            exit_text = f"{record['exit_code']}:{record['exit_signal'] or 0}"
            times = [record[f"{name}_epoch_s"] or 0 for name in _TIMES]
            numbers = [record["job_id"], record["restarts"], record["node_count"], *times]
            if not 0 <= record["job_id"] < _MAX_JOB_ID or not all(0 <= n < 2 ** 63 for n in numbers):
                raise ValueError("a number out of range")
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError):
            stats.malformed += 1
            continue
        times = [value if value < 4294967294 else 0 for value in times]
        shown = record["display_id"]
        builder.add(record["job_id"], "" if shown == str(record["job_id"]) else shown, record["name"], record["user"],
                    record["account"], record["partition"], record["qos"], record["state"],
                    min(record["restarts"], 2 ** 31), *times,
                    min(record["node_count"], 2 ** 31), record["node_list"],
                    tres_gpus(record["allocated_tres"]), exit_text, stats)
    stats.seconds += time.monotonic() - started
    return merge([builder.runs()])


# ----------------------------------------------------------------- sacct --parsable2

def rows_to_runs(lines, columns: tuple[str, ...], stats: IngestStats, counts: dict,
                 builder: _RowBuilder | None = None) -> _RowBuilder:
    """The fallback: lines through ``parse.accounting_rows``, one row at a time."""
    at = {name: position for position, name in enumerate(columns)}
    builder = builder or _RowBuilder()
    for row in parse.accounting_rows(lines, columns, counts=counts):
        builder.add_fields(row, at, stats)
    stats.malformed += counts.pop("malformed", 0)
    return builder


def read_input(path: str, *, stats: IngestStats, progress: bool = False, fast: bool = True,
               workers: int | None = None) -> Runs:
    """A saved dump: ``sacct -D -X --json``, or ``sacct -D -X -P`` with its header
    line. Bad files raise UserInputError (exit status 2) saying what is wrong."""
    started = time.monotonic()
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UserInputError(f"--input {path}: not a regular file (a FIFO, a device or "
                                 "a directory cannot be a sacct dump): save the dump to a file")
        with open(path, "rb") as stream:
            head = stream.read(4096)
            if head.lstrip()[:1] == b"{":
                stream.seek(0)
                return from_json(stream.read(), stats=stats, what=f"--input {path} (sacct --json)")
            stream.seek(0)
            columns = parse.header_columns(stream.readline(65536).decode("utf-8", "replace"))
    except OSError as error:
        raise UserInputError(f"--input {path}: {error.strerror or error}") from None
    except (ParseError, RecursionError) as error:
        raise UserInputError(f"--input {path}: {error}") from None
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise UserInputError(
            f"--input {path}: the header line names no {', '.join(missing)} column; dump with "
            f"`sacct -D -X -P --format={','.join(COLUMNS)}` (header included), or --json")
    tasks = _plan(path, columns, info.st_size)
    workers = workers or min(os.cpu_count() or 1, 4)
    with _progress_bar(progress, info.st_size) as bar:
        if fast and workers > 1 and len(tasks) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
                parts = [bar(part, task) for part, task in
                         zip(pool.imap(_read_block, tasks), tasks, strict=True)]
        elif fast:
            parts = [bar(_read_block(task), task) for task in tasks]
        else:
            counts: dict = {}
            with open(path, encoding="utf-8", errors="replace", newline="\n") as stream:
                stream.readline()
                part_stats = IngestStats()
                lines = (line for line in stream if _count_row(part_stats))
                parts = [(rows_to_runs(lines, columns, part_stats, counts).runs(), part_stats,
                          counts.get("truncated", False))]
    for _, part_stats, _ in parts:
        stats.absorb(part_stats)
    stats.truncated = parts[-1][2] if parts else False
    runs = merge([part for part, _, _ in parts])
    stats.seconds += time.monotonic() - started
    return runs


def _count_row(stats: IngestStats) -> bool:
    stats.rows += 1
    return True


@contextlib.contextmanager
def _progress_bar(enabled: bool, size: int):
    """A function (result, task) -> result that advances a progress bar on stderr by
    the task's bytes, while the context lasts."""
    if not enabled:
        yield lambda result, task: result
        return
    import click

    with click.progressbar(length=size, label="reading the sacct dump", file=sys.stderr,
                           show_eta=True, show_percent=True) as bar:
        def advance(result, task):
            bar.update(task[2] - task[1])
            return result
        yield advance


def _plan(path: str, columns: tuple[str, ...], size: int) -> list[tuple]:
    """Tasks (path, low, high, columns, final) over byte ranges that begin at lines
    which always start a row (``_strong``)."""
    width, id_first = len(columns), columns[0] in ("JobIDRaw", "JobID")
    with open(path, "rb") as stream:
        stream.readline(65536)
        cuts = [stream.tell()]
        while cuts[-1] + 2 * _BLOCK < size:
            stream.seek(cuts[-1] + _BLOCK)
            stream.readline()
            while True:
                position = stream.tell()
                line = stream.readline()
                if not line or _strong(line, width, id_first):
                    break
            if not line:
                break
            cuts.append(position)
    cuts.append(size)
    return [(path, low, high, columns, high == size) for low, high in zip(cuts, cuts[1:], strict=False)
            if high > low]


def _strong(line: bytes, width: int, id_first: bool) -> bool:
    """A line that starts a row whatever came before it (``parse.starts_row``)."""
    return (not id_first or 48 <= line[0] <= 57) and line.count(b"|") >= width - 1


def _read_block(task: tuple) -> tuple[Runs, IngestStats, bool]:
    path, low, high, columns, final = task
    with open(path, "rb") as stream:
        stream.seek(low)
        data = stream.read(high - low)
    stats = IngestStats()
    runs, truncated = parse_block(data, columns, stats, final=final, sort=False)
    return runs, stats, truncated


def parse_block(data: bytes, columns: tuple[str, ...], stats: IngestStats,
                final: bool = True, sort: bool = True) -> tuple[Runs, bool]:
    """Rows of ``--parsable2`` bytes (no header line) as Runs, and whether the last row
    was cut short. ``final``: nothing follows these bytes; ``sort``: as ``merge``."""
    width = len(columns)
    at = {name: position for position, name in enumerate(columns)}
    id_first = columns[0] in ("JobIDRaw", "JobID")
    free = [i for i, name in enumerate(columns) if name in parse.FREE_TEXT_COLUMNS]
    buf = np.frombuffer(data + bytes(_PAD), dtype=np.uint8)
    size = len(data)
    newlines = np.flatnonzero(buf[:size] == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [size]))
    if starts[-1] == size:  # the text ends with a newline
        starts, ends = starts[:-1], ends[:-1]
    stats.rows += int(starts.size)
    pipes = np.flatnonzero(buf[:size] == 124)
    first_pipe = np.searchsorted(pipes, starts)
    separators = np.searchsorted(pipes, ends) - first_pipe
    weak = _row_starts(buf, starts, ends, pipes, first_pipe, separators) if id_first else \
        np.ones(starts.size, bool)
    exact = (separators == width - 1) | ((separators >= width - 1) & (free == [width - 1]))
    clean = weak & exact & np.append(weak[1:], True)
    # Lines that are not plain rows, in runs of neighbours, row by row (``parse``).
    odd = np.flatnonzero(~clean)
    odd_rows, truncated = _RowBuilder(), False
    if odd.size:
        breaks = np.flatnonzero(np.diff(odd) > 1)
        for low, high in zip(np.r_[0, breaks + 1], np.r_[breaks, odd.size - 1], strict=True):
            first, last = int(odd[low]), int(odd[high])
            text = data[starts[first]:ends[last]].decode("utf-8", "replace")
            counts: dict = {}
            rows_to_runs(text.split("\n"), columns, stats, counts, odd_rows)
            truncated = last == starts.size - 1 and counts.get("truncated", False)
    rows = np.flatnonzero(clean)
    separator = pipes[first_pipe[rows][:, None] + np.arange(width - 1)]
    field_start = np.concatenate((starts[rows][:, None], separator + 1), axis=1)
    field_end = np.concatenate((separator, ends[rows][:, None]), axis=1)
    span = lambda column: (field_start[:, at[column]], field_end[:, at[column]])  # noqa: E731
    job_id = _numbers(buf, *span("JobIDRaw"))
    bad = np.flatnonzero((job_id < 0) | (job_id >= _MAX_JOB_ID))
    if bad.size:
        step = np.array([b"." in data[a:b] for a, b in zip(
            span("JobIDRaw")[0][bad].tolist(), span("JobIDRaw")[1][bad].tolist(), strict=True)])
        stats.steps_skipped += int(step.sum())
        stats.malformed += int((~step).sum())
        keep = np.ones(rows.size, bool)
        keep[bad] = False
        field_start, field_end, job_id = field_start[keep], field_end[keep], job_id[keep]
    count = job_id.size
    stats.runs += count
    columns_out: dict = {"job_id": job_id}
    for name, column in {**_TIMES, **_COUNTS}.items():
        if column not in at:
            columns_out[name] = np.zeros(count, np.int64)
            continue
        low, high = span(column)
        values = _numbers(buf, low, high)
        slow = np.flatnonzero(values < 0)
        for row in slow.tolist():
            text = data[low[row]:high[row]].decode("utf-8", "replace")
            values[row] = _epoch(text, stats) if name in _TIMES else _count(text)
        limit = 4294967294 if name in _TIMES else 2 ** 31
        columns_out[name] = np.where(values < limit, values, 0)
    empty = Text(np.zeros(count, np.int32), [""])
    for name, column in _TEXT.items():
        if name != "display":
            columns_out[name] = _codes(data, buf, *span(column)) if column in at else empty
    nodes = columns_out["node_list"]
    columns_out["node_list"] = merge_codes(nodes.codes, ["" if value in _NO_NODES else value
                                                         for value in nodes.values])
    columns_out["display"] = empty
    if "JobID" in at:  # '' where the shown id is JobIDRaw itself (coded only where not)
        low, high = span("JobID")
        other = np.flatnonzero((_numbers(buf, low, high) != job_id)
                               | (high - low != np.subtract(*span("JobIDRaw")[::-1])))
        shown = _codes(data, buf, low[other], high[other])
        codes = np.zeros(count, np.int32)
        codes[other] = shown.codes + 1
        columns_out["display"] = merge_codes(codes, ["", *shown.values])
    state = _codes(data, buf, *span("State")) if "State" in at else empty
    words = [value.split(" ", 1)[0] or "UNKNOWN" for value in state.values]
    columns_out["state"] = merge_codes(state.codes, words)
    for word, code in zip(columns_out["state"].values, np.bincount(
            columns_out["state"].codes, minlength=len(columns_out["state"].values)), strict=True):
        if word not in JOB_STATES and code:
            stats.unknown_states[word] += int(code)
    tres = _codes(data, buf, *span("AllocTRES")) if "AllocTRES" in at else empty
    columns_out["gpus"] = np.array([_gpus(v) for v in tres.values], np.int64)[tres.codes]
    if "NodeList" in at:
        prefix_low, prefix_high, first, last = _node_ranges(buf, *span("NodeList"))
        columns_out["node_prefix"] = _codes(data, buf, prefix_low, prefix_high)
    else:
        first = last = np.full(count, -1, np.int64)
        columns_out["node_prefix"] = empty
    columns_out["node_first"], columns_out["node_last"] = first, last
    return (merge if sort else concat)([Runs(**columns_out), odd_rows.runs()]), \
        bool(final and truncated)


_ID_BYTES = np.zeros(256, bool)
_ID_BYTES[np.frombuffer(b"0123456789_+.[],%-abcdefghijklmnopqrstuvwxyz"
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = True


def _row_starts(buf, starts, ends, pipes, first_pipe, separators) -> np.ndarray:
    """``parse.ROW_START`` over arrays: a first field of 1 to 40 bytes, ASCII digits,
    then nothing or one of ``_+.`` and job-id characters."""
    rows = starts.size
    pipe_at = pipes[np.minimum(first_pipe, max(pipes.size - 1, 0))] if pipes.size else ends
    length = np.where(separators > 0, pipe_at - starts, 0)
    window = _windows(buf, 40)[starts]
    within = np.arange(40) < length[:, None]
    leading = np.minimum(_first_false((window >= 48) & (window <= 57)), length)
    rest_ok = (_ID_BYTES[window] | ~within).all(axis=1)
    marker = window[np.arange(rows), np.minimum(leading, 39)]
    marker_ok = (leading == length) | (marker == 95) | (marker == 43) | (marker == 46)
    return (length >= 1) & (length <= 40) & (leading >= 1) & rest_ok & marker_ok


def _first_false(matrix: np.ndarray) -> np.ndarray:
    """Per row, the index of the first False (the row's width when there is none)."""
    return np.where(matrix.all(axis=1), matrix.shape[1], np.argmin(matrix, axis=1))


def merge_codes(codes: np.ndarray, values: list[str]) -> Text:
    """Text whose ``values`` may repeat, with one code per distinct value."""
    table: dict[str, int] = {}
    remap = np.array([table.setdefault(v, len(table)) for v in values] or [0], np.int32)
    return Text(remap[codes], list(table))


def _windows(buf: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of the buffer as a view: rows gather by start."""
    return np.lib.stride_tricks.sliding_window_view(buf, width)


def _numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Spans of 1 to 18 ASCII digits as int64; -1 for anything else. Spans of one
    length are gathered as one (length x rows) matrix and read digit by digit."""
    lengths = ends - starts
    values = np.full(starts.size, -1, dtype=np.int64)
    counts = np.bincount(np.clip(lengths, 0, 19), minlength=20)
    for length in (np.flatnonzero(counts[1:19]) + 1).tolist():
        rows = slice(None) if counts[length] == starts.size else np.flatnonzero(lengths == length)
        digits = np.ascontiguousarray((_windows(buf, length)[starts[rows]] - np.uint8(48)).T)
        number = digits[0].astype(np.int64)
        for place in digits[1:]:
            number *= 10
            number += place
        values[rows] = np.where((digits <= 9).all(axis=0), number, -1)
    return values


#: Per count of bytes kept (0 to 8), the mask of those low bytes of a little-endian word.
_KEEP = np.array([(1 << (8 * count)) - 1 for count in range(9)], dtype=np.uint64)


def _codes(data: bytes, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Text:
    """String spans as Text. Each span is gathered as 8-byte words (the bytes past its
    end masked off) mixed into one 64-bit hash (two distinct strings collide with
    probability 2^-64), ``np.unique`` numbers the hashes and one span per code is
    decoded. Spans longer than _LIMIT bytes are decoded one by one."""
    lengths = ends - starts
    long = np.flatnonzero(lengths > _LIMIT)
    short = np.flatnonzero(lengths <= _LIMIT) if long.size else np.arange(starts.size)
    size = lengths[short]
    words = max(-(-int(size.max()) // 8), 1) if short.size else 1
    packed = _windows(buf, words * 8)[starts[short]].view("<u8")
    hashes = size.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for word in range(words):
            kept = _KEEP[np.clip(size - 8 * word, 0, 8)]
            hashes = (hashes ^ (packed[:, word] & kept)) * np.uint64(0xBF58476D1CE4E5B9)
            hashes ^= hashes >> np.uint64(31)
    distinct = np.unique(hashes)  # a sort of the hashes, then a search: no argsort
    inverse = np.searchsorted(distinct, hashes)
    first = np.empty(distinct.size, np.int64)  # a row of each (the last written wins)
    first[inverse] = short
    values = [data[a:b].decode("utf-8", "replace") for a, b in
              zip(starts[first].tolist(), ends[first].tolist(), strict=True)]
    codes = np.zeros(starts.size, np.int32)
    codes[short] = inverse
    for row in long.tolist():
        codes[row] = len(values)
        values.append(data[starts[row]:ends[row]].decode("utf-8", "replace"))
    return merge_codes(codes, values) if long.size else Text(codes, values)


def _node_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """``node_range`` over arrays: (prefix starts, prefix ends, first, last)."""
    rows, lengths = starts.size, ends - starts
    # 49 bytes hold every usable list (48 at most) and the byte after it; fewer do
    # when the lists are shorter. "Not found" reads as ``window``, past any byte.
    window = min(49, int(lengths.max()) + 1) if rows else 1
    view = _windows(buf, window)[starts]
    inside = np.arange(window) < lengths[:, None]

    def first_of(byte: int, after: np.ndarray | int = -1) -> np.ndarray:
        """Per row, where ``byte`` first stands past ``after`` (``window``: nowhere)."""
        hits = (view == byte) & inside & (np.arange(window) > np.reshape(after, (-1, 1)))
        return np.where(hits.any(axis=1), hits.argmax(axis=1), window)

    usable = (lengths <= 48) & (first_of(44) == window)  # no ',' and short enough
    open_at, close_at = first_of(91), first_of(93)
    dash_at = first_of(45, open_at)
    first = np.full(rows, -1, np.int64)
    last = np.full(rows, -1, np.int64)
    prefix_end = starts.copy()
    bracket = usable & (open_at < close_at) & (close_at == lengths - 1)
    ranged = bracket & (dash_at < close_at)
    low_end = np.where(ranged, dash_at, close_at)
    first[bracket] = _numbers(buf, (starts + open_at + 1)[bracket], (starts + low_end)[bracket])
    last[bracket] = first[bracket]
    last[ranged] = _numbers(buf, (starts + dash_at + 1)[ranged], (starts + close_at)[ranged])
    prefix_end[bracket] = (starts + open_at)[bracket]
    plain = usable & (open_at == window) & (close_at == window) & (lengths > 0)
    tail = 19
    back = _windows(buf, tail)[np.maximum(ends - tail, 0)]
    digit = (back >= 48) & (back <= 57) & (np.arange(tail) >= tail - lengths[:, None])
    trailing = _first_false(digit[:, ::-1])
    plain &= (trailing > 0) & (trailing <= 18)
    first[plain] = _numbers(buf, (ends - trailing)[plain], ends[plain])
    last[plain] = first[plain]
    prefix_end[plain] = (ends - trailing)[plain]
    for row in np.flatnonzero(ends < tail).tolist():  # the back window would start early
        prefix, first[row], last[row] = node_range(
            bytes(buf[starts[row]:ends[row]]).decode("utf-8", "replace"))
        prefix_end[row] = starts[row] + len(prefix.encode())
    single = (first >= 0) & (last >= first)
    first, last = np.where(single, first, -1), np.where(single, last, -1)
    return starts, np.where(single, prefix_end, starts), first, last
