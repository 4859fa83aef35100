"""Parsers: Slurm's machine-readable output in, frozen records out.

Only ``--json`` (data_parser v0.0.40-v0.0.42) and ``--parsable2`` with an explicit
column list are read; never the default human-readable tables. Every parser raises
``ParseError`` (naming what it was reading) on output that breaks the format's promise,
and tolerates what Slurm legitimately varies: missing optional keys, unknown states,
numbers wrapped as ``{"set", "infinite", "number"}`` or given bare.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from slurmkit.errors import ParseError, SlurmCommandError
from slurmkit.slurm import hostlist
from slurmkit.slurm.models import AccountingRecord, Job, Node, Partition, StepRecord

#: Slurm's sentinel "no time" values in --json output (NO_VAL, INFINITE as uint32).
_NO_TIME = {0, 4294967294, 4294967295}

#: Job state flags that Slurm prints instead of the base state, in Slurm's order of
#: precedence (src/common/slurm_protocol_defs.c, job_state_string).
_JOB_FLAG_PRECEDENCE = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED",
                        "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED",
                        "RESV_DEL_HOLD", "SIGNALING")


# ----------------------------------------------------------------- JSON helpers


def load_json(text: str, what: str, list_key: str) -> dict[str, Any]:
    """Decode one ``--json`` payload and check that it holds ``list_key``.

    Errors reported inside the payload (``"errors": [...]``) raise
    SlurmCommandError with Slurm's own descriptions.
    """
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ParseError(what, f"not valid JSON ({error.msg} at line {error.lineno} "
                               f"column {error.colno})", _excerpt(text)) from None
    except UnicodeDecodeError as error:
        raise ParseError(what, f"not UTF-8 ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise ParseError(what, "JSON nested too deeply for a Slurm payload") from None
    if not isinstance(payload, dict):
        raise ParseError(what, f"expected a JSON object, got {type(payload).__name__}",
                         _excerpt(text))
    _raise_payload_errors(payload.get("errors"), what)
    if not isinstance(payload.get(list_key), list):
        raise ParseError(what, f"no {list_key!r} list in the payload "
                               f"(keys: {', '.join(sorted(payload)) or 'none'})", _excerpt(text))
    return payload


def ascii_int(text: str, default: int | None = None) -> int | None:
    """Plain ASCII digits as an int, else ``default``. (``str.isdigit`` alone accepts
    '²' and Arabic-Indic digits, which ``int`` then refuses or reads as numbers.)"""
    return int(text) if text.isascii() and text.isdigit() else default


def _excerpt(text: str | bytes) -> str:
    return text[:200].decode("utf-8", "replace") if isinstance(text, bytes) else text[:200]


def _raise_payload_errors(errors: Any, what: str) -> None:
    """Errors Slurm reports inside a payload (``"errors": [...]``) as SlurmCommandError."""
    if not errors:
        return
    if not isinstance(errors, list):
        errors = [errors]
    descriptions = "; ".join(
        str(item.get("description") or item.get("error") or item) if isinstance(item, dict)
        else str(item) for item in errors
    )
    raise SlurmCommandError([what.split()[0]], 0, descriptions)


def number(value: Any, default: int | None = None) -> int | None:
    """A Slurm JSON number: bare, or ``{"set", "infinite", "number"}``.

    Returns ``default`` when unset or infinite (callers decide what that means).
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if value.get("infinite") or not value.get("set", True):
            return default
        return number(value.get("number"), default)
    if isinstance(value, str) and ascii_int(value.strip().removeprefix("-")) is not None:
        return int(value)
    raise TypeError(f"not a number: {value!r}")


def is_infinite(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("infinite"))


def epoch(value: Any) -> int | None:
    """A time field: epoch seconds, or None for Slurm's 'no time' sentinels."""
    seconds = number(value)
    if seconds is None or seconds in _NO_TIME or seconds < 0:
        return None
    return seconds


def job_state(states: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(the state Slurm would print, every state word) from a JSON state list."""
    states = tuple(str(state) for state in states)
    for flag in _JOB_FLAG_PRECEDENCE:
        if flag in states:
            return flag, states
    return (states[0] if states else "UNKNOWN"), states


def exit_status(value: Any) -> tuple[int, int | None]:
    """(return code, signal or None) from a JSON exit_code object or ``"2:15"`` text."""
    if isinstance(value, str):
        code, _, signal = value.partition(":")
        return ascii_int(code.strip(), 0), ascii_int(signal.strip(), 0) or None
    if isinstance(value, dict):
        code = number(value.get("return_code"), 0) or 0
        signal = number((value.get("signal") or {}).get("id"), None)
        return code, signal or None
    return number(value, 0) or 0, None


_GRES_ITEM = re.compile(r",(?![^(]*\))")  # commas outside parentheses


@functools.lru_cache(maxsize=4096)
def gres_count(text: str, name: str = "gpu") -> int:
    """Count of one GRES in Slurm's gres strings: ``gpu:8``, ``gpu:a100:4(S:0-1)``,
    ``gpu:a100:2(IDX:0-1),gpu:v100:1(IDX:0)``, ``gres/gpu=4`` or ``gres/gpu:a100=4``."""
    total = 0
    for item in _GRES_ITEM.split(text or ""):
        item = re.sub(r"\(.*\)$", "", item.strip())
        if not item:
            continue
        if "=" in item:  # TRES spelling
            key, _, value = item.partition("=")
            key = key.removeprefix("gres/")
            if key.split(":")[0] == name:
                total += ascii_int(value, 0)
            continue
        parts = item.split(":")
        if parts[0] != name:
            continue
        if len(parts) == 1:
            total += 1
        else:
            total += ascii_int(parts[-1], 0)
    return total


_MEMORY_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024 ** 3}


def tres(value: Any) -> dict[str, float]:
    """TRES as ``{"cpu": 2, "mem": 4000 (MB), "gres/gpu": 8, ...}`` from a TRES string
    (``cpu=2,mem=4000M,gres/gpu=8``) or a JSON list of ``{type, name, count}``."""
    result: dict[str, float] = {}
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                continue
            key = item.get("type", "")
            if item.get("name"):
                key = f"{key}/{item['name']}"
            count = item.get("count")
            if isinstance(count, (int, float)) and count >= 0:
                result[key] = float(count)
        return result
    for item in str(value or "").split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            continue
        unit = raw[-1:].upper()
        try:
            if unit in _MEMORY_UNITS_MB:
                result[key] = float(raw[:-1]) * _MEMORY_UNITS_MB[unit]
            else:
                result[key] = float(raw)
        except ValueError:
            continue  # an unknown unit is not worth failing a whole listing for
    return result


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        if all(type(item) is str for item in value):  # the usual case, 3x faster
            return tuple(item for item in value if item)
        return tuple(str(item) for item in value if str(item))
    if isinstance(value, str):
        return tuple(word for word in value.split(",") if word)
    return ()


def _records(payload: dict, key: str, what: str, build) -> list:
    return _build_all(payload[key], what, build)


def _build_all(items: list, what: str, build) -> list:
    records = []
    for index, item in enumerate(items):
        try:
            records.append(build(item))
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as error:
            name = item.get("name") if hasattr(item, "get") else None
            raise ParseError(what, f"entry {index} ({name or 'unnamed'}): {error!r}",
                             repr(item)[:200]) from None
    return records


# ----------------------------------------------------------------- nodes, partitions


#: The fields of ``scontrol show nodes --json`` a Node is built from (of about 70).
_NODE_FIELDS = ("name", "address", "state", "cpus", "alloc_cpus", "real_memory",
                "alloc_memory", "gres", "gres_used", "partitions", "active_features",
                "features", "reason", "boot_time")


@functools.cache
def _node_decoder():
    """A msgspec decoder of the node payload that keeps only ``_NODE_FIELDS`` (the
    rest of each node is skipped in C), or None without msgspec (Debian's nodes run
    slurmkit from source with python3 packages only). On 12,500 nodes (31 MB) it
    decodes in ~50 ms where ``json.loads`` takes ~250 ms and builds ~900,000 objects
    that are thrown away."""
    try:
        import msgspec
    except ImportError:
        return None
    node_fields = msgspec.defstruct("NodeFields", [(name, Any, None) for name in _NODE_FIELDS])
    payload = msgspec.defstruct("NodesPayload", [("nodes", list[node_fields] | None, None),
                                                 ("errors", Any, None)])
    return msgspec, msgspec.json.Decoder(payload)


def _node_rows(text: str, what: str) -> list[tuple]:
    """Each node's ``_NODE_FIELDS`` values, in that order (None where absent)."""
    fast = _node_decoder()
    if fast is None:
        nodes = load_json(text, what, "nodes")["nodes"]
        return [tuple(item.get(name) for name in _NODE_FIELDS) if isinstance(item, dict)
                else item for item in nodes]
    msgspec, decoder = fast
    try:
        payload = decoder.decode(text)
    except msgspec.ValidationError as error:
        raise ParseError(what, f"unexpected shape ({error})", text) from None
    except msgspec.DecodeError as error:
        raise ParseError(what, f"not valid JSON ({error})", text) from None
    _raise_payload_errors(payload.errors, what)
    if payload.nodes is None:
        raise ParseError(what, "no 'nodes' list in the payload", text)
    astuple = msgspec.structs.astuple
    return [astuple(item) for item in payload.nodes]


def _count(value: Any) -> int:
    """A count field: a bare int (the usual case, no call) or a Slurm number."""
    return value if type(value) is int else number(value, 0) or 0


def parse_nodes_json(text: str) -> list[Node]:
    """``scontrol show nodes --json`` -> one Node per node."""
    what = "scontrol show nodes --json"
    nodes = []
    for index, row in enumerate(_node_rows(text, what)):
        try:
            (name, address, state, cpus, alloc_cpus, real_memory, alloc_memory, gres,
             gres_used, partitions, active_features, features, reason, boot_time) = row
            if name is None:
                raise KeyError("name")
            nodes.append(Node(
                name=str(name),
                address=str(address or name),
                states=frozenset(_words(state) or ("UNKNOWN",)),
                cpus=_count(cpus),
                alloc_cpus=_count(alloc_cpus),
                real_memory_mb=_count(real_memory),
                alloc_memory_mb=_count(alloc_memory),
                gpus=gres_count(gres or ""),
                gpus_used=gres_count(gres_used or ""),
                partitions=_words(partitions),
                features=_words(active_features or features),
                reason=str(reason or ""),
                boot_epoch_s=epoch(boot_time),
            ))
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as error:
            shown = row[0] if isinstance(row, tuple) and row else None
            raise ParseError(what, f"entry {index} ({shown or 'unnamed'}): {error!r}",
                             repr(row)[:200]) from None
    return nodes


def parse_partitions_json(text: str) -> list[Partition]:
    """``scontrol show partitions --json`` -> one Partition per partition."""
    payload = load_json(text, "scontrol show partitions --json", "partitions")

    def build(item: dict) -> Partition:
        nodes = item.get("nodes") or {}
        accounts = item.get("accounts") or {}
        maximums = item.get("maximums") or {}
        max_time = maximums.get("time")
        return Partition(
            name=str(item["name"]),
            nodes=tuple(hostlist.expand(str(nodes.get("configured", "")))),
            state="+".join(_words((item.get("partition") or {}).get("state"))) or "UNKNOWN",
            priority_tier=number((item.get("priority") or {}).get("tier"), 0) or 0,
            max_time_min=None if is_infinite(max_time) else number(max_time),
            grace_time_s=number(item.get("grace_time"), 0) or 0,
            qos=str((item.get("qos") or {}).get("assigned") or ""),
            allow_accounts=_words(accounts.get("allowed")),
            deny_accounts=_words(accounts.get("deny")),
            total_cpus=number((item.get("cpus") or {}).get("total"), 0) or 0,
        )

    return _records(payload, "partitions", "scontrol show partitions --json", build)


# ----------------------------------------------------------------- queue


def parse_jobs_json(text: str) -> list[Job]:
    """``squeue --json`` -> one Job per job (array tasks expanded as Slurm lists them)."""
    payload = load_json(text, "squeue --json", "jobs")

    def build(item: dict) -> Job:
        state, flags = job_state(_words(item.get("job_state")))
        array_job = number(item.get("array_job_id"))
        array_task = number(item.get("array_task_id"))
        time_limit = item.get("time_limit")
        return Job(
            job_id=int(number(item["job_id"])),
            name=str(item.get("name") or ""),
            user=str(item.get("user_name") or item.get("user_id") or ""),
            account=str(item.get("account") or ""),
            partition=str(item.get("partition") or ""),
            qos=str(item.get("qos") or ""),
            state=state,
            state_flags=flags,
            reason=str(item.get("state_reason") or ""),
            nodes=tuple(hostlist.expand(str(item.get("nodes") or ""))),
            node_count=number(item.get("node_count"), 0) or 0,
            submit_epoch_s=epoch(item.get("submit_time")),
            eligible_epoch_s=epoch(item.get("eligible_time")),
            start_epoch_s=epoch(item.get("start_time")),
            end_epoch_s=epoch(item.get("end_time")),
            time_limit_min=None if is_infinite(time_limit) else number(time_limit),
            restart_count=number(item.get("restart_cnt"), 0) or 0,
            requeue=bool(item.get("requeue", False)),
            priority=number(item.get("priority"), 0) or 0,
            array_job_id=array_job or None,
            array_task_id=array_task,
            batch_host=str(item.get("batch_host") or ""),
            tres_per_node=str(item.get("tres_per_node") or ""),
            allocated_tres=tres(item.get("tres_alloc_str") or ""),
            stdout_path=str(item.get("standard_output") or ""),
            working_directory=str(item.get("current_working_directory") or ""),
            comment=str(item.get("comment") or ""),
            preempt_epoch_s=epoch(item.get("preempt_time")),
        )

    return _records(payload, "jobs", "squeue --json", build)


# ----------------------------------------------------------------- accounting (JSON)


def parse_accounting_json(text: str) -> list[AccountingRecord]:
    """``sacct --json [-D]`` -> one AccountingRecord per job run, steps attached."""
    payload = load_json(text, "sacct --json", "jobs")
    return _records(payload, "jobs", "sacct --json", accounting_record_from_json)


def accounting_record_from_json(item: dict) -> AccountingRecord:
    fields = accounting_fields_from_json(item)
    nodes = tuple(hostlist.expand(fields.pop("node_list")))
    fields["node_count"] = (fields["node_count"] or len(nodes)) if nodes else 0
    steps = tuple(_step_from_json(step) for step in item.get("steps") or ())
    return AccountingRecord(**fields, nodes=nodes, steps=steps)


def accounting_fields_from_json(item: dict) -> dict[str, Any]:
    """The fields of an AccountingRecord from one ``sacct --json`` job entry, with the
    node list left as Slurm's hostlist text (``node_list``) and no steps: what a report
    over a million runs needs, without expanding every node list."""
    times = item.get("time") or {}
    state_block = item.get("state") or {}
    state, flags = job_state(_words(state_block.get("current")))
    code, signal = exit_status(item.get("exit_code"))
    array = item.get("array") or {}
    het = item.get("het") or {}
    job_id = int(number(item["job_id"]))
    array_job = number(array.get("job_id")) or None
    array_task = number(array.get("task_id"))
    het_job = number(het.get("job_id")) or None
    het_offset = number(het.get("job_offset"))
    if array_job and array_task is not None:
        display = f"{array_job}_{array_task}"
    elif array_job and array.get("task"):  # pending tasks, one record: 12_[4-10]
        display = f"{array_job}_[{array['task']}]"
    elif het_job and het_offset is not None:
        display = f"{het_job}+{het_offset}"
    else:
        display = str(job_id)
    nodes_text = str(item.get("nodes") or "")
    start = epoch(times.get("start"))
    return dict(
        job_id=job_id,
        display_id=display,
        name=str(item.get("name") or ""),
        user=str(item.get("user") or ""),
        account=str(item.get("account") or ""),
        partition=str(item.get("partition") or ""),
        qos=str(item.get("qos") or ""),
        state=state,
        state_flags=flags,
        reason=str(state_block.get("reason") or ""),
        exit_code=code,
        exit_signal=signal,
        restarts=number(item.get("restart_cnt"), 0) or 0,
        submit_epoch_s=epoch(times.get("submission")),
        eligible_epoch_s=epoch(times.get("eligible")),
        start_epoch_s=start,
        end_epoch_s=epoch(times.get("end")) if start is not None else None,
        elapsed_s=number(times.get("elapsed"), 0) or 0,
        node_list="" if nodes_text in ("None assigned", "(null)") else nodes_text,
        node_count=(number(item.get("allocation_nodes"), 0) or 0) if nodes_text else 0,
        allocated_tres=tres((item.get("tres") or {}).get("allocated") or []),
        array_job_id=array_job,
        array_task_id=array_task if array_job else None,
        het_job_id=het_job,
        het_job_offset=het_offset if het_job else None,
        working_directory=str(item.get("working_directory") or ""),
        failed_node=str(item.get("failed_node") or ""),
    )


def _step_from_json(item: dict) -> StepRecord:
    step = item.get("step") or {}
    times = item.get("time") or {}
    state, _ = job_state(_words(item.get("state")))
    code, signal = exit_status(item.get("exit_code"))
    step_id = str((step.get("id") or {}).get("step_id", "")) if isinstance(step.get("id"), dict) \
        else str(step.get("id") or "")
    # step.id is "123.batch" in v0.0.42 ("job_id.step"); keep the part after the dot.
    step_id = step_id.split(".", 1)[1] if "." in step_id else step_id
    start = epoch(times.get("start"))
    return StepRecord(
        step_id=step_id,
        name=str(step.get("name") or ""),
        state=state,
        exit_code=code,
        exit_signal=signal,
        start_epoch_s=start,
        end_epoch_s=epoch(times.get("end")) if start is not None else None,
        elapsed_s=number(times.get("elapsed"), 0) or 0,
        nodes=tuple(hostlist.expand(str((item.get("nodes") or {}).get("range") or ""))),
    )


# ----------------------------------------------------------------- accounting (parsable2)

#: Columns slurmkit asks sacct for. JobName, the only free-text column, is last: a
#: name containing '|' then only adds separators at the end of the row, where the
#: parser folds them back into the name (``--parsable2`` does not escape '|').
ACCOUNTING_COLUMNS = (
    "JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Reason",
    "ExitCode", "Restarts", "Submit", "Eligible", "Start", "End", "ElapsedRaw",
    "NodeList", "NNodes", "AllocTRES", "JobName",
)

#: sacct columns whose values users write freely (any character, '|' and newlines
#: included). A row can be re-assembled when its header holds exactly one of them.
FREE_TEXT_COLUMNS = frozenset({
    "JobName", "Comment", "AdminComment", "SystemComment", "WorkDir", "SubmitLine",
    "Constraints", "Extra", "Container", "WCKey", "Reservation", "StdOut", "StdErr", "StdIn",
})


#: The first field of a row when it is a job id: ``123``, ``123.batch``, ``12_3``,
#: ``12_[4-10%2]``, ``7+1.0`` (at most 40 characters), then the separator.
ROW_START = re.compile(r"(?=[^|\n]{1,40}\|)[0-9]+(?:[_+.][0-9A-Za-z_+.\[\],%-]*)?\|")


def starts_row(line: str, width: int, id_first: bool, open_row: bool) -> bool:
    """The one rule for where a ``--parsable2`` row begins (the vectorized loader in
    ``slurmkit.goodput.load`` applies the same rule to whole arrays).

    When the first column is a job id, a row begins with one (``ROW_START``); any
    other line continues the row before it (a newline inside a free-text value). While that
    row still lacks separators (``open_row``), only a line that holds a whole row's
    separators (``width - 1``) starts a new one."""
    if id_first and not ROW_START.match(line):
        return False
    return not open_row or line.count("|") >= width - 1


def accounting_rows(lines: Iterable[str], columns: Sequence[str] = ACCOUNTING_COLUMNS,
                    *, header: bool = False, counts: dict | None = None
                    ) -> Iterator[list[str]]:
    """Split ``sacct --parsable2`` lines into rows of exactly ``len(columns)`` fields.

    Rows are joined across newlines by ``starts_row``. A row with extra separators
    (a '|' inside a value) is re-assembled when the columns hold one free-text column:
    the fields before it are counted from the left, those after it from the right.
    ``header``: the first line is sacct's header and names the columns (any order,
    ``columns`` is then ignored). Rows that cannot be repaired raise ParseError, or,
    with ``counts``, are counted there (``malformed``; ``truncated`` when the last
    row was cut short) and skipped."""
    iterator = iter(lines)
    if header:
        first = next(iterator, None)
        if first is None:
            return
        columns = header_columns(first)
    width = len(columns)
    id_first = columns[0] in ("JobIDRaw", "JobID")
    free = [index for index, name in enumerate(columns) if name in FREE_TEXT_COLUMNS]
    pending: str | None = None

    def finish(text: str) -> list[str] | None:
        fields = text.split("|")
        if len(fields) > width and len(free) == 1:
            at, extra = free[0], len(fields) - width
            fields[at:at + extra + 1] = ["|".join(fields[at:at + extra + 1])]
        if len(fields) == width:
            if counts is not None:
                counts["truncated"] = False
            return fields
        if counts is None:
            raise ParseError("sacct --parsable2 output",
                             f"row with {len(fields)} of {width} fields", text)
        counts["malformed"] = counts.get("malformed", 0) + 1
        counts["truncated"] = len(fields) < width
        return None

    for line in iterator:
        line = line.rstrip("\n")
        open_row = pending is not None and pending.count("|") < width - 1
        if starts_row(line, width, id_first, open_row):
            if pending is not None and (row := finish(pending)) is not None:
                yield row
            pending = line
        elif pending is not None:
            pending += "\n" + line
        elif counts is None:
            raise ParseError("sacct --parsable2 output", "a line that starts no row", line)
        elif line:
            counts["malformed"] = counts.get("malformed", 0) + 1
    if pending is not None and (row := finish(pending)) is not None:
        yield row


def header_columns(line: str) -> tuple[str, ...]:
    """Column names from sacct's ``--parsable2`` header line."""
    return tuple(name.strip() for name in line.rstrip("\n").split("|"))


def _epoch_text(text: str) -> int | None:
    value = ascii_int(text.strip())
    # "Unknown", "None", "" (SLURM_TIME_FORMAT=%s everywhere else)
    return None if value is None or value in _NO_TIME else value


def _int_text(text: str, default: int = 0) -> int:
    text = text.strip()
    value = ascii_int(text.removeprefix("-"))
    return default if value is None else (-value if text.startswith("-") else value)


def parse_accounting_parsable2(lines: Iterable[str], columns: Sequence[str] = ACCOUNTING_COLUMNS,
                               *, header: bool = False) -> Iterator[AccountingRecord]:
    """Stream ``sacct --parsable2 -o <columns>`` (times as epoch seconds) into
    AccountingRecords; step rows (``123.batch``) are attached to their run."""
    lines = iter(lines)
    if header:
        first = next(lines, "")
        given = header_columns(first)
        if list(given) != list(columns):
            raise ParseError("sacct --parsable2 header", f"expected columns {'|'.join(columns)}",
                             first)
    index = {name: position for position, name in enumerate(columns)}
    missing = {"JobIDRaw", "JobID", "State"} - set(index)
    if missing:
        raise ParseError("sacct --parsable2 columns", f"missing {', '.join(sorted(missing))}")
    current: AccountingRecord | None = None
    steps: list[StepRecord] = []

    def field_(row: list[str], name: str, default: str = "") -> str:
        position = index.get(name)
        return row[position] if position is not None else default

    for row in accounting_rows(lines, columns):
        raw_id = field_(row, "JobIDRaw")
        shown_id = field_(row, "JobID")
        state_words = field_(row, "State").split()
        state = state_words[0] if state_words else "UNKNOWN"
        code, signal = exit_status(field_(row, "ExitCode", "0:0"))
        start = _epoch_text(field_(row, "Start"))
        nodes = tuple(hostlist.expand(field_(row, "NodeList")))
        if "." in raw_id:  # a step of the current run
            step_id = raw_id.split(".", 1)[1]
            steps.append(StepRecord(
                step_id=step_id, name=field_(row, "JobName"), state=state,
                exit_code=code, exit_signal=signal, start_epoch_s=start,
                end_epoch_s=_epoch_text(field_(row, "End")) if start is not None else None,
                elapsed_s=_int_text(field_(row, "ElapsedRaw")), nodes=nodes))
            continue
        if current is not None:
            yield _with_steps(current, steps)
            steps = []
        if ascii_int(raw_id.strip()) is None:
            raise ParseError("sacct --parsable2 output", f"JobIDRaw {raw_id!r} is not a job id",
                             "|".join(row))
        array_job = array_task = het_job = het_offset = None
        match = re.fullmatch(r"(\d+)_(\d+)", shown_id)
        if match:
            array_job, array_task = int(match[1]), int(match[2])
        match = re.fullmatch(r"(\d+)\+(\d+)", shown_id)
        if match:
            het_job, het_offset = int(match[1]), int(match[2])
        current = AccountingRecord(
            job_id=int(raw_id), display_id=shown_id, name=field_(row, "JobName"),
            user=field_(row, "User"), account=field_(row, "Account"),
            partition=field_(row, "Partition"), qos=field_(row, "QOS"),
            state=state, state_flags=(state,), reason=field_(row, "Reason"),
            exit_code=code, exit_signal=signal,
            restarts=_int_text(field_(row, "Restarts")),
            submit_epoch_s=_epoch_text(field_(row, "Submit")),
            eligible_epoch_s=_epoch_text(field_(row, "Eligible")),
            start_epoch_s=start,
            end_epoch_s=_epoch_text(field_(row, "End")) if start is not None else None,
            elapsed_s=_int_text(field_(row, "ElapsedRaw")),
            nodes=nodes, node_count=_int_text(field_(row, "NNodes")) if nodes else 0,
            allocated_tres=tres(field_(row, "AllocTRES")),
            array_job_id=array_job, array_task_id=array_task,
            het_job_id=het_job, het_job_offset=het_offset,
        )
    if current is not None:
        yield _with_steps(current, steps)


def _with_steps(record: AccountingRecord, steps: list[StepRecord]) -> AccountingRecord:
    if not steps:
        return record
    from dataclasses import replace

    return replace(record, steps=tuple(steps))


def parse_sinfo_json(text: str) -> dict[str, frozenset[str]]:
    """``sinfo --json`` -> {node: state flags}. sinfo groups nodes per (partition,
    state); a node in several partitions appears once per partition, always with the
    same state."""
    payload = load_json(text, "sinfo --json", "sinfo")
    states: dict[str, frozenset[str]] = {}
    for index, entry in enumerate(payload["sinfo"]):
        try:
            flags = frozenset(_words((entry.get("node") or {}).get("state")))
            for name in (entry.get("nodes") or {}).get("nodes") or ():
                states[str(name)] = flags
        except (AttributeError, TypeError) as error:
            raise ParseError("sinfo --json", f"entry {index}: {error!r}") from None
    return states
