"""The goodput report: a summary dict (totals, queues, classes, node failures,
preemption cost, failure rate, expected ETTR) and one record per job, laid out as a
terminal table, JSON, CSV or one self-contained HTML file. JSON and CSV write jobs in
batches as they are built: a million runs never sit in memory as dicts."""

from __future__ import annotations

import codecs
import csv
import html
import io
import json
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np

from slurmkit.goodput import engine
from slurmkit.goodput.engine import BUCKETS, Goodput
from slurmkit.goodput.load import IngestStats, Runs, Text, _windows
from slurmkit.output import escape
from slurmkit.output import table as text_table

#: Kokolis et al. (HPCA 2025): the higher of the two rates they report.
DEFAULT_FAILURES_PER_NODE_DAY = 6.5 / 1000
_BATCH = 20_000


def select_jobs(runs: Runs, wanted: Iterable[str]) -> Runs:
    """Runs of the jobs named as sacct names them: ``12`` (the job, or the whole array
    or het job), ``12_3`` (one array task), ``7+1`` (one het component); a JobIDRaw too."""
    wanted = {str(token) for token in wanted}
    numbers = {int(token) for token in wanted if token.isascii() and token.isdigit()}
    shown = runs.display.mask(lambda value: value in wanted or value.split("_")[0].split("+")[0]
                              in wanted)
    return runs.take(np.flatnonzero(np.isin(runs.job_id, list(numbers)) | shown))


def build(runs: Runs, *, events=None, stats: IngestStats | None = None, now: int | None = None,
          classes: Iterable[str] = (), ranks: dict[str, int] | None = None,
          capacity_gpus: int | None = None, node_events=None, cluster_nodes: int | None = None,
          long_job_hours: float = 1.0,
          window_s: int = engine.DEFAULT_PREEMPTOR_WINDOW_S,
          context: Runs | None = None) -> tuple[dict[str, Any], Goodput]:
    """(the summary, the engine's result for per-job records). ``context``: every
    record around ``runs`` when ``runs`` holds selected jobs only (preemptors)."""
    now = int(now if now is not None else time.time())
    stats = stats or IngestStats()
    result = engine.compute(runs, now=now, events=events or {}, classes=tuple(classes),
                            ranks=ranks, window_s=window_s, stats=stats, context=context)
    starts = result.c_eligible[result.c_eligible > 0]
    ends = result.c_end[result.c_end > 0]
    window = {"start_epoch_s": int(starts.min()) if starts.size else None,
              "end_epoch_s": int(ends.max()) if ends.size else None}
    node_table = engine.node_failure_table(result, node_events)
    failures = sum((row["blamed_failures"] or 0) + row["inplace_restarts"] for row in node_table) \
        if node_events else int(result.c_node_failures.sum())
    if cluster_nodes is None:
        cluster_nodes = engine.cluster_node_count(result.runs)
    days = ((window["end_epoch_s"] or now) - (window["start_epoch_s"] or now)) / 86400
    if failures >= 3 and cluster_nodes * days > 0:
        rate, source = failures / (cluster_nodes * days), "measured"
    else:
        rate = DEFAULT_FAILURES_PER_NODE_DAY
        source = (f"assumed (Kokolis et al., HPCA 2025): {failures} node failures over "
                  f"{cluster_nodes} nodes and {days:.2f} days are too few to measure")
    requeues = result.c_last - result.c_first
    waits = result.c_buckets[:, engine.B["queue_after_requeue"]]
    restart_s = float(np.median(waits[requeues > 0] / requeues[requeues > 0])) \
        if (requeues > 0).any() else 0.0
    overheads = [result.r_split[run, engine.B["restart_overhead"]] for chain in
                 np.flatnonzero(result.c_events).tolist()
                 for run in range(int(result.c_first[chain]) + 1, int(result.c_last[chain]) + 1)]
    if overheads:
        restart_s += statistics.median(overheads)
    expected = []
    long_jobs = result.c_events & (result.c_wallclock >= long_job_hours * 3600)
    for chain in np.flatnonzero(long_jobs).tolist():
        record = int(result.r_first[result.c_first[chain]])
        interval, write = engine.checkpoint_interval(
            result.events.get(int(result.runs.job_id[record])))
        expected.append(engine.expected_ettr(
            result.runs.shown_id(record), int(result.c_nodes[chain]),
            result.c_productive[chain] / result.c_wallclock[chain], failures_per_node_day=rate,
            restart_s=restart_s, interval_s=interval, write_s=write))
    account = Text(result.runs.account.codes[result.r_last[result.c_last]],
                   result.runs.account.values)
    summary: dict[str, Any] = {
        "generated_epoch_s": now, "window": window, "ingest": stats.to_dict(),
        "totals": engine.totals(result, Text(np.zeros(len(result), np.int32), ["all"]),
                                keep_empty=True)["all"],
        "queues": dict(sorted(engine.totals(result, account).items())),
        "classes": dict(sorted(engine.totals(result, result.c_class).items())),
        "node_failures": node_table, "preemptions": engine.preemption_cost(result),
        "failure_rate": {"failures_per_node_day": round(rate, 6), "source": source,
                         "cluster_nodes": cluster_nodes, "node_failures": failures,
                         "restart_overhead_s": round(restart_s, 1)},
        "expected_ettr": expected}
    if capacity_gpus and window["start_epoch_s"] and window["end_epoch_s"]:
        summary["utilisation"] = engine.utilisation(result, capacity_gpus, window["start_epoch_s"],
                                                    window["end_epoch_s"])
    return summary, result


def worst(result: Goodput, count: int) -> np.ndarray:
    """The jobs with the most badput GPU-hours, worst first."""
    badput = (result.c_wallclock - result.c_productive) * np.maximum(result.c_gpus, 1)
    return np.argsort(-badput, kind="stable")[:count]


# ----------------------------------------------------------------- per-job records

#: Marks what a row of the output matrix leaves empty: never a byte of UTF-8.
_PAD = 0xFF
#: A batch of jobs whose output matrix would grow past this is halved.
_MATRIX_BYTES = 64 << 20
_EVIDENCE = ["sacct", "events"]


class _TooWide(Exception):
    """A batch's output matrix would be too big (a very long name): halve the batch."""

class _Encoder:
    """Every distinct string of a column encoded once per report, as JSON or as a CSV
    cell (``csv`` quoting, and the formula guard), laid end to end in one buffer."""

    def __init__(self, csv_format: bool, rows: int):
        self.csv, self.rows, self.tables = csv_format, rows, {}
        if csv_format:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")

            def cell(value: str | None) -> str:
                if value is None:
                    return ""
                buffer.seek(0)
                buffer.truncate()
                writer.writerow(("'" + value if value.startswith(_FORMULA) else value, ""))
                return buffer.getvalue()[:-2]
            self.encode = cell
        else:
            quote = json.encoder.encode_basestring  # as json.dumps(value, ensure_ascii=False)
            self.encode = lambda value: "null" if value is None else quote(value)

    def _bytes(self, value: str | None) -> bytes:
        text = self.encode(value)
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate (a JSON dump may hold one): escaped
            return text.encode("utf-8", "replace") if self.csv else \
                json.encoder.encode_basestring_ascii(value).encode()

    def table(self, values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bytes of every value end to end, offsets, lengths) of a list of strings."""
        found = self.tables.get(id(values))
        if found is None:  # the list is kept with its table: its id is not reused
            texts = [self._bytes(value) for value in values]
            lengths = np.array([len(text) for text in texts] or [0], np.int64)
            flat = np.frombuffer(b"".join(texts) + b"\xff" * (int(lengths.max()) + 1), np.uint8)
            found = self.tables[id(values)] = (values, flat, np.cumsum(lengths) - lengths, lengths)
        return found[1:]


class _Lines:
    """Lines of output built in a byte matrix, one row per line and one range of
    columns per piece (a key, a number, a string), ``_PAD`` where a row has less to
    say; read out row by row without the padding. A million jobs become text through
    NumPy operations per piece, not Python objects per value."""

    def __init__(self, rows: int, encoder: _Encoder, can_split: bool):
        self.rows, self.encoder, self.can_split = rows, encoder, can_split
        self.parts: list[np.ndarray] = []
        self.width = 0
        self.null = "" if encoder.csv else "null"

    def put(self, matrix: np.ndarray) -> None:
        if self.can_split and self.rows * (self.width + matrix.shape[1]) > _MATRIX_BYTES:
            raise _TooWide
        self.parts.append(matrix)
        self.width += matrix.shape[1]

    def literal(self, text: str) -> None:
        self.put(np.frombuffer(text.encode(), np.uint8)[None, :])

    def number(self, values: np.ndarray, decimals: int | None = None,
               null: np.ndarray | None = None) -> None:
        """Integers, or floats as ``repr(np.round(value, decimals))``; null where ``null``."""
        matrix = _integer(values) if decimals is None else _decimal(values, decimals)
        self.put(matrix if null is None else _choose(null, _strings([self.null]), matrix))

    def text(self, values: list, codes: np.ndarray) -> None:
        self.put(self._strings(values, codes))

    def choice(self, texts: list[str], codes: np.ndarray) -> None:
        """One of ``texts`` per row, as they are."""
        self.put(_strings(texts)[codes])

    def _strings(self, values: list, codes: np.ndarray) -> np.ndarray:
        if self.encoder.rows * 4 < len(values):  # a few jobs: encode only their strings
            used, codes = np.unique(codes, return_inverse=True)
            values = [values[code] for code in used.tolist()]
        flat, offsets, lengths = self.encoder.table(values)
        width = max(int(lengths[codes].max()) if codes.size else 0, 1)
        if self.can_split and self.rows * (self.width + width) > _MATRIX_BYTES:
            raise _TooWide
        matrix = _windows(flat, width)[offsets[codes]]
        return np.where(np.arange(width) < lengths[codes][:, None], matrix, _PAD)

    def shown(self, runs: Runs, records: np.ndarray, missing: np.ndarray | None = None) -> None:
        """Job ids as sacct shows them (JobID where it differs from JobIDRaw), or null
        where ``missing``."""
        key = ("blank", id(runs.display.values))
        if key not in self.encoder.tables:
            self.encoder.tables[key] = np.array([not value for value in runs.display.values])
        blank = self.encoder.tables[key][runs.display.codes[records]]
        number = _integer(runs.job_id[records])
        if not self.encoder.csv:
            quote = np.full((records.size, 1), 34, np.uint8)
            number = np.hstack((quote, number, quote))
        matrix = _choose(blank, number, self._strings(runs.display.values,
                                                      runs.display.codes[records]))
        self.put(matrix if missing is None else _choose(missing, _strings([self.null]), matrix))

    def into(self, out: np.ndarray, low: int, high: int) -> np.ndarray:
        """Rows ``low:high`` into ``out``, piece by piece."""
        at = 0
        for part in self.parts:
            out[:, at:at + part.shape[1]] = part[low:high] if part.shape[0] == self.rows else part
            at += part.shape[1]
        return out


#: Rows are assembled and read out this many bytes at a time: a block that stays in
#: the processor's cache (whole batches at once were three times slower).
_CHUNK_BYTES = 1 << 20


def _assemble(jobs: _Lines, runs: _Lines | None, starts: np.ndarray) -> list[bytes]:
    """The text of the rows: CSV rows of ``jobs``; or JSON rows of ``runs`` with each
    job's fields before the run that ``starts`` names."""
    pieces = []
    width = jobs.width + (runs.width if runs else 0)
    step = max(1, _CHUNK_BYTES // max(width, 1))
    for low in range(0, jobs.rows, step):
        high = min(low + step, jobs.rows)
        if runs is None:
            chunk = jobs.into(np.empty((high - low, width), np.uint8), low, high)
        else:
            first, last = int(starts[low]), int(starts[high]) if high < jobs.rows else runs.rows
            chunk = np.empty((last - first, width), np.uint8)
            chunk[:, :jobs.width] = _PAD
            chunk[starts[low:high] - first, :jobs.width] = jobs.into(
                np.empty((high - low, jobs.width), np.uint8), low, high)
            runs.into(chunk[:, jobs.width:], first, last)
        pieces.append(chunk[chunk != _PAD].tobytes())
    return pieces


def _choose(where: np.ndarray, one: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Rows of ``one`` where ``where``, else of ``other`` (padded to one width)."""
    width = max(one.shape[1], other.shape[1])
    one, other = (np.pad(side, ((0, 0), (width - side.shape[1], 0)), constant_values=_PAD)
                  for side in (one, other))
    return np.where(where[:, None], one, other)


#: Four digits at a time, as 4-byte words: with leading zeros, and without (``_PAD``).
_FULL = np.frombuffer(b"".join(b"%04d" % i for i in range(10000)), "<u4")
_TOP = np.frombuffer(b"".join(b"%4d" % i for i in range(10000)).replace(b" ", b"\xff"), "<u4")
_NONE = np.uint32(0xFFFFFFFF)


def _digits(magnitude: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative int64 values right-aligned in a byte matrix, a
    '-' before those ``negative``."""
    width = len(str(int(magnitude.max() if magnitude.size else 0)))
    groups = -(-width // 4)
    out = np.empty((magnitude.size, groups), "<u4")
    rest = magnitude
    for group in range(groups - 1, -1, -1):
        high = rest // 10000
        low = rest - high * 10000
        piece = np.where(high == 0, _TOP[low], _FULL[low])
        out[:, group] = piece if group == groups - 1 else np.where(rest == 0, _NONE, piece)
        rest = high
    out = out.view(np.uint8)[:, groups * 4 - width:]
    if negative.any():
        out = np.hstack((np.full((magnitude.size, 1), _PAD, np.uint8), out))
        rows = np.flatnonzero(negative)
        out[rows, width - (out[rows] != _PAD).sum(axis=1)] = 45
    return out


def _integer(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64)
    magnitude = np.abs(values)
    if magnitude.size and magnitude.min() < 0:  # -2**63 has no int64 magnitude
        return _strings([str(value) for value in values.tolist()])
    return _digits(magnitude, values < 0)


def _decimal(values: np.ndarray, decimals: int) -> np.ndarray:
    """``repr(np.round(value, decimals))`` per value. NumPy rounds to n / 10^decimals
    with n = rint(value * 10^decimals), and while |n| < 10^15 the shortest repr of
    that float is n's digits with the point put back (a decimal of 15 digits is the
    one that reads back to its float); larger values, nan and inf go through repr."""
    scaled = np.rint(values * 10.0 ** decimals)
    if not (np.abs(scaled) < 1e15).all():
        return _strings([repr(value) for value in np.round(values, decimals).tolist()])
    whole, fraction = np.divmod(np.abs(scaled).astype(np.int64), 10 ** decimals)
    tail = np.full((values.size, decimals + 1), 46, np.uint8)
    trailing = np.ones(values.size, bool)  # zeros at the end, but the first decimal
    for place in range(decimals, 0, -1):
        digit = fraction % 10
        fraction //= 10
        trailing &= (digit == 0) & (place > 1)
        tail[:, place] = np.where(trailing, _PAD, 48 + digit)
    return np.hstack((_digits(whole, np.signbit(scaled)), tail))


def _strings(texts: list[str]) -> np.ndarray:
    encoded = [text.encode() for text in texts]
    width = max(1, *map(len, encoded))
    matrix = np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(len(encoded), width)
    return np.where(matrix == 0, _PAD, matrix)


def _lines(result: Goodput, chains: np.ndarray, encoder: _Encoder) -> list[bytes]:
    """The records of ``chains`` (jobs): CSV rows, or JSON objects each after ',\n'.
    JSON lines are built as two matrices, the jobs' fields and their runs', and the
    fields of a job go on the row of its first run."""
    runs, B, csv_format = result.runs, engine.B, encoder.csv
    first_run, last_run = result.c_first[chains], result.c_last[chains]
    count = last_run - first_run + 1
    starts = np.cumsum(count) - count
    run = np.repeat(first_run - starts, count) + np.arange(int(count.sum()))
    record, last_record = result.r_first[first_run], result.r_last[last_run]
    job = _Lines(chains.size, encoder, chains.size > 1)
    lines = job

    def field(key: str, opening: str = ", ") -> None:
        if csv_format:
            lines.literal("" if key == "job_id" else ",")
        else:
            lines.literal(f'{opening}"{key}": ')

    def texts(key: str, column: Text, rows: np.ndarray) -> None:
        field(key)
        lines.text(column.values, column.codes[rows])

    def numbers(key: str, values: np.ndarray, decimals: int | None = None, null=None,
                opening: str = ", ") -> None:
        field(key, opening)
        lines.number(values, decimals, null)

    field("job_id", opening=",\n{")
    job.shown(runs, record)
    numbers("job_id_raw", runs.job_id[record])
    for key, rows in (("name", record), ("user", record), ("account", last_record),
                      ("partition", last_record), ("qos", last_record)):
        texts(key, getattr(runs, key), rows)
    texts("class", result.c_class, chains)
    numbers("runs", count)
    numbers("requeues", count - 1)
    texts("final_state", runs.state, last_record)
    for key, name in engine.COUNTS.items():
        numbers(key, getattr(result, f"c_{name}")[chains])
    wall, productive = result.c_wallclock[chains], result.c_productive[chains]
    numbers("ettr", productive / np.where(wall > 0, wall, 1), 4, wall <= 0)
    numbers("wallclock_s", wall, 1)
    numbers("productive_s", productive, 1)
    buckets = result.c_buckets[chains]
    for index, name in enumerate(BUCKETS):
        numbers(name, buckets[:, index], 1, opening=', "badput_s": {' if index == 0 else ", ")
    if not csv_format:
        job.literal("}")
    steps = result.r_lost_steps[run]
    numbers("lost_steps", engine.per_group(np.add, np.maximum(steps, 0), starts),
            null=~result.c_events[chains])
    numbers("gpus", result.c_gpus[chains])
    numbers("nodes", result.c_nodes[chains])
    numbers("gpu_hours", engine.per_group(np.add, result.r_gpu_s[run], starts) / 3600, 3)
    field("evidence")
    job.text(_EVIDENCE, result.c_events[chains].astype(np.int64))
    if csv_format:
        job.literal("\n")
        return _assemble(job, None, starts)
    numbers("eligible_epoch_s", result.c_eligible[chains], null=result.c_eligible[chains] == 0)
    numbers("end_epoch_s", result.c_end[chains], null=result.c_end[chains] == 0)
    field("run_details")
    job.literal("[")
    lines = _Lines(run.size, encoder, chains.size > 1)
    later = np.ones(run.size, np.int64)
    later[starts] = 0
    lines.choice(["", ", "], later)
    r_first, r_last = result.r_first[run], result.r_last[run]
    split = result.r_split[run]
    numbers("run", runs.restarts[r_last], opening="{")
    texts("state", runs.state, r_last)
    for key, values in (("start_epoch_s", result.r_start[run]), ("end_epoch_s", result.r_end[run])):
        numbers(key, values, null=values == 0)
    texts("nodes", runs.node_list, r_first)
    numbers("gpus", result.r_gpus[run])
    numbers("gpu_hours", result.r_gpu_s[run] / 3600, 3)
    numbers("queue_s", result.r_queue[run], 1)
    numbers("lost_s", split[:, B["lost_work"]] + split[:, B["preemption"]], 1)
    numbers("lost_steps", steps, null=steps < 0)
    for key, decimals in (("restart_overhead", 1), ("failure_detection", 1),
                          ("checkpoint_stall", 2)):
        numbers(f"{key}_s", split[:, B[key]], decimals)
    field("spurious_preemption")
    lines.choice(["false", "true"], result.r_spurious[run].astype(np.int64))
    preemptor = result.r_preemptor[run]
    field("preempted_by")
    lines.shown(result.preemptor_runs, np.maximum(preemptor, 0), preemptor < 0)
    numbers("resizes", r_last - r_first)
    field("inplace_restarts")
    inplace = np.flatnonzero(np.isin(run, list(result.r_restarts))) if result.r_restarts else []
    codes = np.zeros(run.size, np.int64)
    codes[inplace] = np.arange(1, len(inplace) + 1)
    lines.choice(["[]", *(json.dumps(result.r_restarts[r], ensure_ascii=False)
                          for r in run[inplace].tolist())], codes)
    lines.literal("}")
    closing = np.zeros(run.size, np.int64)
    closing[starts + count - 1] = 1
    lines.choice(["", "]}"], closing)
    return _assemble(job, lines, starts)


def _records(result: Goodput, chains: np.ndarray, encoder: _Encoder) -> Iterator[list[bytes]]:
    """``_lines`` of the chains batch by batch; a batch too wide is halved."""
    def fitted(batch: np.ndarray) -> Iterator[list[bytes]]:
        try:
            yield _lines(result, batch, encoder)
        except _TooWide:
            yield from fitted(batch[:batch.size // 2])
            yield from fitted(batch[batch.size // 2:])
    for offset in range(0, chains.size, _BATCH):
        yield from fitted(chains[offset:offset + _BATCH])


def jobs(result: Goodput, chains: np.ndarray | None = None) -> Iterator[dict]:
    """One dict per job (all, or ``chains``): the JSON report's records, read back."""
    chains = np.arange(len(result)) if chains is None else np.asarray(chains, dtype=np.int64)
    for pieces in _records(result, chains, _Encoder(False, chains.size)):
        yield from json.loads(b"[" + b"".join(pieces)[1:] + b"]")


# ----------------------------------------------------------------- table


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(summary: dict, result: Goodput) -> str:
    totals = summary["totals"]
    lines = [
        f"goodput {_window_text(summary)}: {totals['jobs']} jobs, {totals['runs']} runs, "
        f"{totals['requeues']} requeues, {totals['inplace_restarts']} restarts in place, "
        f"{totals['node_failures']} node failures, {totals['preemptions']} preemptions, "
        f"{totals['spurious_requeues']} spurious requeues",
        f"ETTR {_pct(totals['ettr'])} (GPU-weighted {_pct(totals['gpu_weighted_ettr'])}); "
        f"{totals['gpu_hours']:.1f} GPU-hours, {totals['productive_gpu_hours']:.1f} productive",
        "", "where the rest went (GPU-hours):",
        text_table(["BUCKET", "GPU_HOURS", "HOURS"],
                   [(name, f"{totals['badput_gpu_hours'][name]:.2f}",
                     f"{totals['badput_h'][name]:.2f}") for name in BUCKETS]), ""]
    for title, key in (("per queue", "queues"), ("per workload class", "classes")):
        lines += [f"{title}:", text_table(["NAME", "JOBS", "RUNS", "ETTR", "GPU_H",
                                           "PRODUCTIVE_GPU_H", "NODE_FAIL", "PREEMPTED"],
                                          _group_rows(summary[key])), ""]
    lines += ["jobs with the most badput:", text_table(
        ["JOBID", "NAME", "ACCOUNT", "CLASS", "RUNS", "REQUEUES", "IN_PLACE", "FINAL", "ETTR",
         "LOST_STEPS", "NODE_FAIL", "PREEMPTED"],
        [(j["job_id"], j["name"][:30], j["account"], j["class"], j["runs"], j["requeues"],
          j["inplace_restarts"], j["final_state"], _pct(j["ettr"]), j["lost_steps"],
          j["node_failures"], j["preemptions"]) for j in jobs(result, worst(result, 15))]), ""]
    inplace = [(j["job_id"], r["run"], item["attempt"], ",".join(item["dead_nodes"]) or "-",
                item["spare_used"], item["failure_detection_s"], item["restart_overhead_s"],
                item["lost_work_s"], item["lost_steps"])
               for j in jobs(result, np.flatnonzero(result.c_inplace)[:50])
               for r in j["run_details"] for item in r["inplace_restarts"]]
    if inplace:
        lines += ["restarts inside the allocation:", text_table(
            ["JOBID", "RUN", "ATTEMPT", "DEAD_NODES", "SPARE", "DETECTION_S", "RESTART_S",
             "LOST_WORK_S", "LOST_STEPS"], inplace), ""]
    if summary["node_failures"]:
        lines += ["nodes in failures:", text_table(
            ["NODE", "NODE_FAIL_RUNS", "BLAMED", "IN_PLACE"],
            _rows(summary["node_failures"][:10], _NODE_KEYS)), ""]
    if summary["preemptions"]:
        lines += ["preemption cost (who preempted whom):", text_table(
            ["PREEMPTOR", "CLASS", "VICTIM", "CLASS", "COUNT", "GPU_H_LOST"],
            _rows(summary["preemptions"], _PREEMPTION_KEYS)), ""]
    rate = summary["failure_rate"]
    lines.append(f"failure rate: {rate['failures_per_node_day']} per node-day, "
                 f"{escape(rate['source'])}")
    ingest = summary["ingest"]
    odd = {k: v for k, v in ingest.items() if k in ("malformed_rows", "unparsable_times",
                                                    "steps_skipped", "superseded_records") and v}
    if ingest["unknown_states"] or odd or ingest["truncated_input"]:
        lines.append("input notes: " + escape(", ".join(
            [f"{v} {k.replace('_', ' ')}" for k, v in odd.items()]
            + [f"{count} runs in unknown state {state}"
               for state, count in ingest["unknown_states"].items()]
            + (["the input ended in the middle of a row"] if ingest["truncated_input"] else []))))
    return "\n".join(lines).rstrip() + "\n"


_NODE_KEYS = ("node", "node_fail_runs", "blamed_failures", "inplace_restarts")
_PREEMPTION_KEYS = ("preemptor_queue", "preemptor_class", "victim_queue", "victim_class",
                    "preemptions", "gpu_hours_lost")


def _rows(records: list[dict], keys: tuple[str, ...]) -> list[tuple]:
    return [tuple(record[key] for key in keys) for record in records]


def _group_rows(groups: dict[str, dict]) -> list[tuple]:
    """A row per queue or workload class, for the terminal and the HTML page alike."""
    return [(name, v["jobs"], v["runs"], _pct(v["ettr"]), f"{v['gpu_hours']:.1f}",
             f"{v['productive_gpu_hours']:.1f}", v["node_failures"], v["preemptions"])
            for name, v in groups.items()]


def _window_text(summary: dict) -> str:
    window = summary["window"]
    if not window["start_epoch_s"]:
        return "(no jobs)"
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
    return f"{fmt(window['start_epoch_s'])} .. {fmt(window['end_epoch_s'])}"


# ----------------------------------------------------------------- JSON, CSV


def write_json(summary: dict, result: Goodput, stream: IO[str]) -> None:
    """The summary, then ``jobs``: one job per line, written batch by batch."""
    head = json.dumps(summary, indent=1, ensure_ascii=False)
    stream.write(head[:-2] + ',\n "jobs": [')
    skip = 1  # the first job has no comma before it
    for pieces in _records(result, np.arange(len(result)), _Encoder(False, len(result))):
        if skip and pieces:
            pieces[0], skip = pieces[0][1:], 0
        _write(stream, pieces)
    stream.write("\n ]\n}\n")


CSV_FIELDS = ("job_id", "job_id_raw", "name", "user", "account", "partition", "qos", "class",
              "runs", "requeues", "final_state", "node_failures", "preemptions",
              "spurious_requeues", "inplace_restarts", "resizes", "ettr", "wallclock_s",
              "productive_s", *[f"badput_{name}_s" for name in BUCKETS], "lost_steps", "gpus",
              "nodes", "gpu_hours", "evidence")
#: A cell starting with one of these is a formula to a spreadsheet (OWASP: CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def write_csv(summary: dict, result: Goodput, stream: IO[str]) -> None:
    """One row per job, the JSON record's fields with ``badput_s`` spread out."""
    stream.write(",".join(CSV_FIELDS) + "\n")
    for pieces in _records(result, np.arange(len(result)), _Encoder(True, len(result))):
        _write(stream, pieces)


def _write(stream: IO[str], pieces: list[bytes]) -> None:
    """UTF-8 bytes to a text stream: to its binary buffer when it has one in UTF-8."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None and codecs.lookup(stream.encoding or "ascii").name == "utf-8":
        stream.flush()
        for piece in pieces:  # write, not writelines: wrappers that copy see only write
            buffer.write(piece)
    else:
        stream.write(b"".join(pieces).decode("utf-8", "surrogateescape"))


# ----------------------------------------------------------------- HTML


def format_html(summary: dict, result: Goodput, *, timeline_jobs: Iterable[str] = ()) -> str:
    from slurmkit.goodput import plots

    shown = list(jobs(result, worst(result, 500)))
    timeline = [j for j in jobs(result) if j["job_id"] in set(timeline_jobs)] if timeline_jobs \
        else sorted(jobs(result, np.argsort(-(result.c_last - result.c_first), kind="stable")[:8]),
                    key=lambda job: (-job["runs"], job["job_id"]))
    figures = plots.render_all(summary, timeline)
    totals = summary["totals"]
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>slurmkit goodput</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}",
        "h1{font-size:22px}h2{font-size:17px;margin-top:28px}",
        "table{border-collapse:collapse;font-size:13px;margin:8px 0}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f1f1f1}",
        ".figure{margin:12px 0}.kpi{font-size:28px;font-weight:600}",
        "</style></head><body>",
        f"<h1>slurmkit goodput — {esc(_window_text(summary))}</h1>",
        f"<p><span class='kpi'>{_pct(totals['ettr'])}</span> ETTR "
        f"(GPU-weighted {_pct(totals['gpu_weighted_ettr'])}) over {totals['jobs']} jobs, "
        f"{totals['runs']} runs, {totals['gpu_hours']:.1f} GPU-hours "
        f"({totals['productive_gpu_hours']:.1f} productive); {totals['node_failures']} node "
        f"failures, {totals['inplace_restarts']} restarts in place, {totals['preemptions']} "
        f"preemptions, {totals['spurious_requeues']} spurious requeues.</p>"]
    for key, title in (("timeline", "Runs of the jobs that were interrupted most"),
                       ("ettr_by_queue", "ETTR by queue"), ("badput", "Where the GPU-hours went"),
                       ("utilisation", "GPU use by workload class")):
        if figures.get(key):
            parts += [f"<h2>{esc(title)}</h2>",
                      f"<div class='figure' id='plot-{key}'>{figures[key]}</div>"]
    parts.append("<h2>Queues</h2>" + _html_table(
        ["queue", "jobs", "runs", "ETTR", "GPU-hours", "productive", "node failures",
         "preemptions"], _group_rows(summary["queues"])))
    parts.append("<h2>Jobs with the most badput</h2>" + _html_table(
        ["job", "name", "user", "queue", "class", "runs", "in place", "final", "ETTR",
         "lost steps", "node failures", "preemptions"],
        [(j["job_id"], j["name"], j["user"], j["account"], j["class"], j["runs"],
          j["inplace_restarts"], j["final_state"], _pct(j["ettr"]), j["lost_steps"],
          j["node_failures"], j["preemptions"]) for j in shown]))
    if summary["node_failures"]:
        parts.append("<h2>Nodes in failures</h2>" + _html_table(
            ["node", "NODE_FAIL runs", "blamed", "restarts in place"],
            _rows(summary["node_failures"], _NODE_KEYS)))
    if summary["preemptions"]:
        parts.append("<h2>Preemption cost</h2>" + _html_table(
            ["preemptor", "class", "victim", "class", "count", "GPU-hours lost"],
            _rows(summary["preemptions"], _PREEMPTION_KEYS)))
    if summary["expected_ettr"]:
        parts.append("<h2>Measured vs expected ETTR (long jobs)</h2>" + _html_table(
            ["job", "nodes", "measured", "expected", "interval s", "optimal interval s", "MTTF h"],
            [(r["job_id"], r["nodes"], _pct(r.get("measured_ettr")), _pct(r.get("expected_ettr")),
              r.get("checkpoint_interval_s"), r.get("optimal_interval_s"), r.get("mttf_h"))
             for r in summary["expected_ettr"]]))
    ingest = summary["ingest"]
    parts.append(f"<p style='color:#666;font-size:12px'>Input: {ingest['rows']} rows, "
                 f"{ingest['runs']} runs, {ingest['malformed_rows']} malformed, "
                 f"{ingest['superseded_records']} superseded, unknown states "
                 f"{esc(json.dumps(ingest['unknown_states']))}, truncated: "
                 f"{ingest['truncated_input']}. Failure rate: "
                 f"{esc(summary['failure_rate']['source'])}.</p></body></html>")
    return "\n".join(parts)


def _html_table(headers, rows) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc('-' if c is None else str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
