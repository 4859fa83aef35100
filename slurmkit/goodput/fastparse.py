"""A byte-level, vectorized parser for big ``sacct -P`` dumps (NumPy over the raw
bytes; no Python work per row on the common path).

Lines and separators are located with array searches; each numeric field is read by
gathering its digits; categorical fields (user, account, partition, QOS, state) become
codes through ``np.unique`` on fixed-width byte arrays; free-text fields (JobName,
JobID, NodeList) stay as byte spans and are decoded only when a report needs them.
Odd lines — a JobName containing a newline (the line continues the previous row's
name, exactly as the row-by-row parser treats it) or a row cut short — are found by
their separator count. A JobName containing '|' needs no repair: it is everything
after the 17th separator.
"""

from __future__ import annotations

import numpy as np

from slurmkit.goodput import ingest
from slurmkit.goodput.ingest import IngestStats

_DIGITS = 20
_PAD = 512  # zero bytes after a chunk: fixed-width windows never run off its end
_GPU_BYTES = __import__("re").compile(rb"gres/gpu(?::[^=,|\n]*)?=(\d+)")


class Spans:
    """Strings as (start, end) byte spans of one buffer, decoded on access."""

    def __init__(self, buffer: bytes, starts: np.ndarray, ends: np.ndarray):
        self.buffer, self.starts, self.ends = buffer, starts, ends

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.buffer[self.starts[key]:self.ends[key]].decode("utf-8", "replace")
        return Spans(self.buffer, self.starts[key], self.ends[key])

    def __iter__(self):
        buffer = self.buffer
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield buffer[start:end].decode("utf-8", "replace")


def _numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Digits-only spans as int64; -1 where the span is empty or holds anything else.
    Spans are grouped by length; each group is one gathered (rows x length) matrix and
    one matrix-vector product with the powers of ten."""
    lengths = ends - starts
    values = np.full(starts.size, -1, dtype=np.int64)
    for length in np.unique(lengths):
        length = int(length)
        if length <= 0 or length > 18:
            continue
        rows = np.flatnonzero(lengths == length)
        digits = _windows(buf, length)[starts[rows]].astype(np.int64) - 48
        valid = ((digits >= 0) & (digits <= 9)).all(axis=1)
        values[rows] = np.where(valid, digits @ (10 ** np.arange(length - 1, -1, -1,
                                                                   dtype=np.int64)), -1)
    return values


def _codes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, limit: int = _PAD
           ) -> tuple[np.ndarray, list[str]]:
    """Categorical spans as codes. Each span is gathered into a zero-padded row of
    8-byte words, the words are mixed into one 64-bit hash (a collision between two
    distinct values is a 2^-64 event), ``np.unique`` numbers the hashes, and one row
    per code is decoded."""
    lengths = np.minimum(ends - starts, limit)
    width = max(int(lengths.max()) if lengths.size else 1, 1)
    words = -(-width // 8)
    offsets = np.arange(words * 8)
    raw = _windows(buf, words * 8)[starts]  # (rows x bytes), no index matrix
    raw = np.where(offsets < lengths[:, None], raw, np.uint8(0))
    packed = np.ascontiguousarray(raw).view(np.uint64)
    hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for word in range(words):
            hashes = (hashes ^ packed[:, word]) * np.uint64(0xBF58476D1CE4E5B9)
            hashes ^= hashes >> np.uint64(31)
    uniques, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    texts = [bytes(buf[starts[i]:starts[i] + lengths[i]]).decode("utf-8", "replace")
             for i in first.tolist()]
    return inverse.astype(np.int32).ravel(), texts


def _windows(buf: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of the buffer, as a view (no copy): rows can be
    gathered by start offset. ``buf`` carries _PAD zero bytes past its last line, so a
    window never runs off its end."""
    return np.lib.stride_tricks.sliding_window_view(buf, width)


def node_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, limit: int = 48):
    """NodeList spans as one numeric range each, vectorized: ``prefix[a-b]``,
    ``prefix[a]`` or ``prefixNNN``. Returns (prefix spans, first, last, single) where
    ``single`` is False for anything else (several ranges, no digits...)."""
    rows = starts.size
    lengths = ends - starts
    window = int(min(max(int(lengths.max()) if rows else 1, 1), limit))
    view = _windows(buf, window)[starts]

    def first_of(byte: int, after=None):
        hits = view == byte
        if after is not None:
            hits &= np.arange(window) > after[:, None]
        position = hits.argmax(axis=1)
        found = hits[np.arange(rows), position] & (position < lengths)
        return np.where(found, position, window)

    open_at, close_at = first_of(91), first_of(93)
    dash_at = first_of(45, open_at)
    comma = first_of(44) < window
    bracket = (open_at < window) & (close_at == lengths - 1) & (close_at > open_at + 1) & ~comma
    first = np.full(rows, -1, dtype=np.int64)
    last = np.full(rows, -1, dtype=np.int64)
    prefix_end = starts.copy()
    has_dash = bracket & (dash_at < close_at)
    low_end = np.where(has_dash, dash_at, close_at)
    first[bracket] = _numbers(buf, starts[bracket] + open_at[bracket] + 1,
                              starts[bracket] + low_end[bracket])
    last[bracket] = first[bracket]
    last[has_dash] = _numbers(buf, starts[has_dash] + dash_at[has_dash] + 1,
                              starts[has_dash] + close_at[has_dash])
    prefix_end[bracket] = starts[bracket] + open_at[bracket]
    # No bracket: the trailing digits are the number.
    plain = ~bracket & ~comma & (open_at == window) & (lengths > 0) & (lengths <= limit)
    if plain.any():
        tail = 12
        back = _windows(buf, tail)[np.maximum(ends[plain] - tail, 0)]
        digit = (back >= 48) & (back <= 57)
        valid = np.arange(tail) >= (tail - np.minimum(lengths[plain], tail))[:, None]
        trailing = np.cumprod((digit & valid)[:, ::-1], axis=1).sum(axis=1)
        has_number = trailing > 0
        index = np.flatnonzero(plain)[has_number]
        count = trailing[has_number]
        first[index] = _numbers(buf, ends[index] - count, ends[index])
        last[index] = first[index]
        prefix_end[index] = ends[index] - count
    single = (first >= 0) & (last >= first)
    return (starts, np.where(single, prefix_end, starts)), first, last, single


_CATEGORICAL = ("Account", "Partition", "QOS", "State", "AllocTRES")
_NUMERIC = ("JobIDRaw", "Restarts", "Eligible", "Start", "End", "NNodes")
_TEXT = ("JobName", "JobID", "User", "NodeList", "ExitCode", "Submit")
_DATA: bytes = b""  # the dump, shared with forked workers (copy-on-write)


def _parse_chunk(low: int, high: int, header: tuple[str, ...]) -> dict:
    """Parse bytes [low, high) of ``_DATA`` (whole lines). Spans are absolute offsets."""
    data = _DATA
    stats = IngestStats()
    width = len(header)
    column = {name: position for position, name in enumerate(header)}
    buf = np.frombuffer(data[low:high] + bytes(_PAD), dtype=np.uint8)
    size = high - low
    newlines = np.flatnonzero(buf[:size] == 10)
    line_starts = np.concatenate(([0], newlines + 1))
    line_ends = np.concatenate((newlines, [size]))
    nonempty = line_ends > line_starts
    line_starts, line_ends = line_starts[nonempty], line_ends[nonempty]
    stats.rows += int(line_starts.size)
    pipes = np.flatnonzero(buf[:size] == 124)
    first_pipe = np.searchsorted(pipes, line_starts)
    separators = np.searchsorted(pipes, line_ends) - first_pipe
    # A row starts with a job id (digits, then '|', or '.' for a step): rows have all
    # their separators; a line with fewer whose first field is a job id is a row cut
    # short; any other line continues the previous row's JobName.
    first_byte = buf[line_starts] if line_starts.size else np.zeros(0, np.uint8)
    digit_first = (first_byte >= 48) & (first_byte <= 57)
    good = digit_first & (separators >= width - 1)
    short_rows = np.zeros(line_starts.size, dtype=bool)
    candidates = np.flatnonzero(digit_first & ~good & (separators > 0))
    if candidates.size:
        field_end = pipes[first_pipe[candidates]]
        short_rows[candidates] = [bytes(buf[a:b]).split(b".", 1)[0].isdigit() for a, b in zip(
            line_starts[candidates].tolist(), field_end.tolist(), strict=True)]
    stats.malformed += int(short_rows.sum())
    stats.truncated = bool(short_rows.size and short_rows[-1])
    good_index = np.flatnonzero(good)
    if good_index.size and (~good[:good_index[0]] & ~short_rows[:good_index[0]]).any():
        stats.malformed += int((~good[:good_index[0]] & ~short_rows[:good_index[0]]).sum())
    separator = pipes[first_pipe[good_index][:, None] + np.arange(width - 1)]
    starts = np.concatenate((line_starts[good_index][:, None], separator + 1), axis=1)
    ends = np.concatenate((separator, line_ends[good_index][:, None]), axis=1)
    # A JobName runs on over continuation lines, up to the next row or short row.
    boundary = np.flatnonzero(good | short_rows)
    following = np.searchsorted(boundary, good_index, side="right")
    later = np.minimum(following, max(boundary.size - 1, 0))
    name_end = np.where(following < boundary.size, line_starts[boundary[later]] - 1,
                        line_ends[-1] if line_ends.size else 0)
    ends[:, -1] = np.maximum(ends[:, -1], name_end)

    def field(name):
        return starts[:, column[name]], ends[:, column[name]]

    job_id = _numbers(buf, *field("JobIDRaw"))
    is_job = job_id >= 0
    if not is_job.all():
        s, e = field("JobIDRaw")
        dots = np.array([b"." in bytes(buf[a:b]) for a, b in zip(
            s[~is_job].tolist(), e[~is_job].tolist(), strict=True)], dtype=bool)
        stats.steps_skipped += int(dots.sum())
        stats.malformed += int((~dots).sum())
    keep = np.flatnonzero(is_job)
    starts, ends = starts[keep], ends[keep]
    result: dict = {"stats": stats, "JobIDRaw": job_id[keep]}
    for name in _NUMERIC[1:]:
        if name not in column:
            result[name] = np.zeros(keep.size, dtype=np.int64)
            continue
        s, e = field(name)
        values = _numbers(buf, s, e)
        for position in np.flatnonzero(values < 0):  # "Unknown", ISO dates, damage
            text = bytes(buf[s[position]:e[position]]).decode("utf-8", "replace")
            values[position] = (ingest._time(text, stats) or 0) if text not in \
                ("Unknown", "None", "", "N/A") and name not in ("Restarts", "NNodes") else 0
        result[name] = values
    for name in _CATEGORICAL:
        result[name] = _codes(buf, *field(name)) if name in column else \
            (np.zeros(keep.size, dtype=np.int32), [""])
    for name in _TEXT:
        if name in column:
            s, e = field(name)
            result[name] = (s + low, e + low)
    if "NodeList" in column:
        (prefix_start, prefix_end), first, last, single = node_ranges(buf, *field("NodeList"))
        result["node_prefix"] = _codes(buf, prefix_start, prefix_end)
        result["node_first"], result["node_last"], result["node_single"] = first, last, single
    stats.runs += int(keep.size)
    return result


def parse(data: bytes, header: tuple[str, ...], stats: IngestStats, workers: int = 0):
    """A RunTable from the dump's bytes (without the header line), parsed by
    ``workers`` forked processes (default: every core). None when the columns do not
    suit the fast path (JobName must be last, the required columns present)."""
    import multiprocessing
    import os

    from slurmkit.goodput.table import RunTable

    if header[-1] != "JobName" or any(name not in header for name in ingest.REQUIRED):
        return None
    global _DATA
    _DATA = data
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(data) > (16 << 20):
        cuts = [0]
        for part in range(1, workers):
            position = data.find(b"\n", len(data) * part // workers)
            while position >= 0 and not (data[position + 1:position + 2].isdigit()):
                position = data.find(b"\n", position + 1)
            cuts.append(position + 1 if position >= 0 else len(data))
        cuts.append(len(data))
        bounds = [(low, high) for low, high in zip(cuts, cuts[1:], strict=False) if high > low]
        with multiprocessing.get_context("fork").Pool(len(bounds)) as pool:
            parts = pool.starmap(_parse_chunk, [(low, high, header) for low, high in bounds])
    else:
        parts = [_parse_chunk(0, len(data), header)]
    _DATA = b""
    for part in parts:
        stats.absorb(part["stats"])
    concat = lambda name: np.concatenate([part[name] for part in parts])  # noqa: E731
    # Categorical codes: one table across the chunks.
    merged: dict[str, tuple[np.ndarray, list[str]]] = {}
    for name in _CATEGORICAL:
        table: dict[str, int] = {}
        codes = []
        for part in parts:
            local_codes, texts = part[name]
            remap = np.array([table.setdefault(text, len(table)) for text in texts] or [0],
                             dtype=np.int32)
            codes.append(remap[local_codes])
        merged[name] = (np.concatenate(codes), list(table))
    state_codes, state_texts = merged["State"]
    words = [text.split(" ", 1)[0] or "UNKNOWN" for text in state_texts]
    clean: dict[str, int] = {}
    remap = np.array([clean.setdefault(word, len(clean)) for word in words] or [0],
                     dtype=np.int32)
    state_codes = remap[state_codes]
    for word, code in clean.items():
        if word not in ingest.KNOWN_STATES:
            stats.unknown_states[word] = stats.unknown_states.get(word, 0) + int(
                (state_codes == code).sum())
    tres_codes, tres_texts = merged["AllocTRES"]
    per_tres = np.array([int(match[1]) if (match := ingest._GPU.search(text)) else 0
                         for text in tres_texts] or [0], dtype=np.int64)
    count = int(sum(part["JobIDRaw"].size for part in parts))

    def spans(name, fallback=None):
        if name in parts[0]:
            return Spans(data, concat_pair(name, 0), concat_pair(name, 1))
        if fallback:
            return spans(fallback)
        return Spans(b"", np.zeros(count, np.int64), np.zeros(count, np.int64))

    def concat_pair(name, side):
        return np.concatenate([part[name][side] for part in parts])

    # Submit is read only where Eligible is missing (it is the fallback); elapsed
    # follows from start and end (ElapsedRaw is not parsed at all).
    eligible, start_col, end_col = concat("Eligible"), concat("Start"), concat("End")
    submit = np.zeros(eligible.size, dtype=np.int64)
    if "Submit" in parts[0]:
        submit_spans = Spans(data, concat_pair("Submit", 0), concat_pair("Submit", 1))
        for position in np.flatnonzero(eligible == 0):
            text = submit_spans[int(position)]
            submit[position] = int(text) if text.isdigit() else (
                ingest._time(text, stats) or 0 if text not in ("Unknown", "None", "") else 0)
    elapsed = np.where((start_col > 0) & (end_col > 0), np.maximum(0, end_col - start_col), 0)
    node_columns = None
    if "node_prefix" in parts[0]:
        table_: dict[str, int] = {}
        prefix = np.concatenate([np.array([table_.setdefault(t, len(table_)) for t in
                                           part["node_prefix"][1]] or [0], dtype=np.int32)
                                 [part["node_prefix"][0]] for part in parts])
        node_columns = (prefix, concat("node_first"), concat("node_last"), concat("node_single"))
    table = RunTable(
        job_id=concat("JobIDRaw"), restarts=concat("Restarts").astype(np.int32),
        state=state_codes, account=merged["Account"][0], partition=merged["Partition"][0],
        qos=merged["QOS"][0], submit=submit, eligible=eligible,
        start=concat("Start"), end=concat("End"), elapsed=elapsed,
        nodes=concat("NNodes").astype(np.int32), gpus=per_tres[tres_codes],
        name=spans("JobName"), display_id=spans("JobID"), user=spans("User"),
        node_list=spans("NodeList"), exit_code=spans("ExitCode"), states=list(clean),
        accounts=merged["Account"][1], partitions=merged["Partition"][1],
        qoses=merged["QOS"][1])
    table.node_columns = node_columns
    return table
