"""Streaming ingest of ``sacct -D`` output: ``--parsable2`` (with or without a header
line, any column order) or ``--json``. Built for a million runs: each line becomes one
small tuple, repeated strings are interned, node lists stay unexpanded until a metric
needs them.

Odd input never stops the ingest; it is counted: unknown states, rows with the wrong
number of fields, step rows (``123.batch``), truncated last lines, unparsable times.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from slurmkit.errors import ParseError

#: The states sacct prints for a run (first word; "CANCELLED by 2001" -> CANCELLED).
KNOWN_STATES = frozenset({
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REQUEUED",
    "RESIZING", "REVOKED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "COMPLETING",
    "CONFIGURING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
})

#: Columns the report needs (``slurmkit goodput`` asks sacct for exactly these).
COLUMNS = ("JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Restarts",
           "Submit", "Eligible", "Start", "End", "ElapsedRaw", "NNodes", "NodeList",
           "AllocTRES", "ExitCode", "JobName")
REQUIRED = ("JobIDRaw", "State", "Start", "End")

_GPU = re.compile(r"gres/gpu(?::[^=,]*)?=(\d+)")
_NUMBER = re.compile(r"^\d+$")
_ROW_START = re.compile(r"^\d+(?:\.[A-Za-z0-9_-]+)?\|")


class Run(NamedTuple):
    """One run of one job. Times are epoch seconds (None: none)."""

    job_id: int
    display_id: str
    name: str
    user: str
    account: str
    partition: str
    qos: str
    state: str
    restarts: int
    submit: int | None
    eligible: int | None
    start: int | None
    end: int | None
    elapsed_s: int
    nodes: int
    node_list: str
    gpus: int
    exit_code: str


@dataclass
class IngestStats:
    rows: int = 0
    runs: int = 0
    steps_skipped: int = 0
    malformed: int = 0
    unknown_states: dict[str, int] = field(default_factory=dict)
    bad_times: int = 0
    truncated: bool = False
    seconds: float = 0.0
    #: records of a run that never started, left behind by a later record of the same job
    superseded: int = 0

    def absorb(self, part: IngestStats) -> None:
        """Add the counts of a chunk parsed apart (by a worker process); ``seconds``
        stays the caller's wall time."""
        self.rows += part.rows
        self.runs += part.runs
        self.steps_skipped += part.steps_skipped
        self.malformed += part.malformed
        self.bad_times += part.bad_times
        self.superseded += part.superseded
        self.truncated |= part.truncated
        for state, count in part.unknown_states.items():
            self.unknown_states[state] = self.unknown_states.get(state, 0) + count

    def to_dict(self) -> dict:
        return {"rows": self.rows, "runs": self.runs, "steps_skipped": self.steps_skipped,
                "malformed_rows": self.malformed, "unknown_states": dict(self.unknown_states),
                "unparsable_times": self.bad_times, "truncated_input": self.truncated,
                "superseded_records": self.superseded,
                "ingest_seconds": round(self.seconds, 3)}


class _Interner:
    def __init__(self):
        self.strings: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        return self.strings.setdefault(text, text)


def _time(text: str, stats: IngestStats) -> int | None:
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    if _NUMBER.match(text):
        value = int(text)
        return value if 0 < value < 4294967294 else None
    try:  # SLURM_TIME_FORMAT was not %s: ISO 8601, local time of this machine
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        stats.bad_times += 1
        return None


class Progress:
    """Rows per second on stderr, at most twice a second (only when asked)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.started = self.last = time.monotonic()

    def update(self, rows: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if final or now - self.last >= 0.5:
            self.last = now
            rate = rows / max(now - self.started, 1e-9)
            print(f"\rslurmkit goodput: {rows:,} rows ({rate:,.0f}/s)" + ("\n" if final else ""),
                  end="", file=sys.stderr, flush=True)


def parse_parsable2(lines: Iterable[str], columns: tuple[str, ...] | None = None, *,
                    stats: IngestStats | None = None, progress: bool = False) -> Iterator[Run]:
    """Runs from ``sacct -P`` lines. ``columns`` None: the first line is the header."""
    stats = stats if stats is not None else IngestStats()
    started = time.monotonic()
    iterator = iter(lines)
    if columns is None:
        header = next(iterator, "")
        columns = tuple(name.strip() for name in header.rstrip("\n").split("|"))
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise ParseError("sacct --parsable2 header", f"missing columns {', '.join(missing)}; "
                         f"dump with --format={','.join(COLUMNS)}", "|".join(columns))
    width = len(columns)
    index = {name: position for position, name in enumerate(columns)}
    name_last = columns[-1] == "JobName"
    intern = sys.intern  # C-level; repeated users, accounts, states share one string
    meter = Progress(progress)
    # Positions of every field (-1: column absent); locals for the hot loop.
    at = {name: index.get(name, -1) for name in COLUMNS}
    i_raw, i_id, i_user, i_account = at["JobIDRaw"], at["JobID"], at["User"], at["Account"]
    i_partition, i_qos, i_state, i_restarts = at["Partition"], at["QOS"], at["State"], at["Restarts"]
    i_submit, i_eligible, i_start, i_end = at["Submit"], at["Eligible"], at["Start"], at["End"]
    i_elapsed, i_nnodes, i_nodes, i_tres = at["ElapsedRaw"], at["NNodes"], at["NodeList"], at["AllocTRES"]
    i_exit, i_name = at["ExitCode"], at["JobName"]
    new_run = tuple.__new__  # a NamedTuple built without its Python-level __new__
    known = KNOWN_STATES
    unknown = stats.unknown_states

    def when(text: str) -> int | None:  # the slow path: not epoch seconds
        return _time(text, stats)

    def finish(row: list[str]) -> Run | None:
        raw = row[i_raw]
        if not raw.isdigit():
            if "." in raw:
                stats.steps_skipped += 1
            else:
                stats.malformed += 1
            return None
        state = row[i_state]
        if " " in state:
            state = state.split(" ", 1)[0]
        if state not in known:
            state = state or "UNKNOWN"
            unknown[state] = unknown.get(state, 0) + 1
        gpus = 0
        if i_tres >= 0:
            tres = row[i_tres]
            position = tres.find("gres/gpu")
            if position >= 0:
                match = _GPU.search(tres, position)
                gpus = int(match[1]) if match else 0
        shown = row[i_id] if i_id >= 0 else raw
        submit = row[i_submit] if i_submit >= 0 else ""
        eligible = row[i_eligible] if i_eligible >= 0 else ""
        start, end = row[i_start], row[i_end]
        restarts = row[i_restarts] if i_restarts >= 0 else "0"
        elapsed = row[i_elapsed] if i_elapsed >= 0 else "0"
        nnodes = row[i_nnodes] if i_nnodes >= 0 else "0"
        return new_run(Run, (
            int(raw), raw if shown == raw else shown,
            intern(row[i_name]) if i_name >= 0 else "",
            intern(row[i_user]) if i_user >= 0 else "",
            intern(row[i_account]) if i_account >= 0 else "",
            intern(row[i_partition]) if i_partition >= 0 else "",
            intern(row[i_qos]) if i_qos >= 0 else "", intern(state),
            int(restarts) if restarts.isdigit() else 0,
            (int(submit) if submit.isdigit() else when(submit)) if i_submit >= 0 else None,
            (int(eligible) if eligible.isdigit() else when(eligible)) if i_eligible >= 0 else None,
            int(start) if start.isdigit() else when(start),
            int(end) if end.isdigit() else when(end),
            int(elapsed) if elapsed.isdigit() else 0, int(nnodes) if nnodes.isdigit() else 0,
            intern(row[i_nodes]) if i_nodes >= 0 else "", gpus,
            intern(row[i_exit]) if i_exit >= 0 else "0:0"))

    pending: list[str] | None = None
    last_short = False
    rows = 0
    runs = 0
    for line in iterator:
        rows += 1
        if not rows & 0xFFFF:
            meter.update(rows)
        if line[-1:] == "\n":
            line = line[:-1]
        parts = line.split("|", width - 1)
        if len(parts) == width and line[:1].isdigit():
            last_short = False
            if pending is not None:
                run = finish(pending)
                if run is not None:
                    runs += 1
                    yield run
            pending = parts
            if not name_last and parts[-1].count("|"):
                stats.malformed += 1
                pending = None
            continue
        # Not a complete row: a row cut short, or a newline inside the JobName.
        if _ROW_START.match(line):
            stats.malformed += 1
            last_short = True
        elif pending is not None and name_last:
            pending[-1] += "\n" + line
        else:
            stats.malformed += 1
    if last_short:
        stats.truncated = True  # the last line was a row cut short
    if pending is not None:
        run = finish(pending)
        if run is not None:
            runs += 1
            yield run
    stats.rows += rows
    stats.runs += runs
    meter.update(rows, final=True)
    stats.seconds += time.monotonic() - started


def parse_json(text: str, *, stats: IngestStats | None = None) -> Iterator[Run]:
    """Runs from ``sacct --json [-D]`` (exact names, whatever they contain)."""
    from slurmkit.slurm.parse import accounting_record_from_json

    stats = stats if stats is not None else IngestStats()
    started = time.monotonic()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        stats.truncated = True
        raise ParseError("sacct --json input", f"not valid JSON ({error.msg} at line "
                                               f"{error.lineno}): truncated?", text) from None
    intern = _Interner()
    for item in payload.get("jobs", []) if isinstance(payload, dict) else []:
        stats.rows += 1
        try:
            record = accounting_record_from_json(item)
        except (TypeError, ValueError, KeyError, AttributeError):
            stats.malformed += 1
            continue
        state = record.state
        if state not in KNOWN_STATES:
            stats.unknown_states[state] = stats.unknown_states.get(state, 0) + 1
        stats.runs += 1
        from slurmkit.slurm import hostlist
        yield Run(record.job_id, record.display_id, record.name, intern(record.user),
                  intern(record.account), intern(record.partition), intern(record.qos),
                  intern(state), record.restarts, record.submit_epoch_s, record.eligible_epoch_s,
                  record.start_epoch_s, record.end_epoch_s, record.elapsed_s, record.node_count,
                  hostlist.compress(record.nodes), record.gpus,
                  f"{record.exit_code}:{record.exit_signal or 0}")
    stats.seconds += time.monotonic() - started


def read_input(path: str, *, stats: IngestStats, progress: bool = False) -> Iterator[Run]:
    """A saved dump: JSON when it starts with '{', else parsable2 with a header line."""
    with open(path, encoding="utf-8", errors="replace", newline="") as stream:
        first = stream.read(1)
        stream.seek(0)
        if first == "{":
            yield from parse_json(stream.read(), stats=stats)
        else:
            yield from parse_parsable2(stream, stats=stats, progress=progress)
