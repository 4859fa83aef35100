"""Parsers: Slurm's machine-readable output in, frozen records out.

Only ``--json`` (data_parser v0.0.40-v0.0.42) and ``--parsable2`` with an explicit
column list are read; never the default human-readable tables. Every parser raises
``ParseError`` (naming what it was reading) on output that breaks the format's promise,
and tolerates what Slurm legitimately varies: missing optional keys, unknown states,
numbers wrapped as ``{"set", "infinite", "number"}`` or given bare.
"""

from __future__ import annotations

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
                               f"column {error.colno})", text) from None
    if not isinstance(payload, dict):
        raise ParseError(what, f"expected a JSON object, got {type(payload).__name__}", text)
    errors = payload.get("errors") or []
    if errors:
        descriptions = "; ".join(
            str(item.get("description") or item.get("error") or item) if isinstance(item, dict)
            else str(item) for item in errors
        )
        raise SlurmCommandError([what.split()[0]], 0, descriptions)
    if not isinstance(payload.get(list_key), list):
        raise ParseError(what, f"no {list_key!r} list in the payload "
                               f"(keys: {', '.join(sorted(payload)) or 'none'})", text)
    return payload


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
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
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
        code_i = int(code) if code.strip().isdigit() else 0
        signal_i = int(signal) if signal.strip().isdigit() else 0
        return code_i, signal_i or None
    if isinstance(value, dict):
        code = number(value.get("return_code"), 0) or 0
        signal = number((value.get("signal") or {}).get("id"), None)
        return code, signal or None
    return number(value, 0) or 0, None


_GRES_ITEM = re.compile(r",(?![^(]*\))")  # commas outside parentheses


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
            if key.split(":")[0] == name and value.isdigit():
                total += int(value)
            continue
        parts = item.split(":")
        if parts[0] != name:
            continue
        if len(parts) == 1:
            total += 1
        elif parts[-1].isdigit():
            total += int(parts[-1])
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
        return tuple(str(item) for item in value if str(item))
    if isinstance(value, str):
        return tuple(word for word in value.split(",") if word)
    return ()


def _records(payload: dict, key: str, what: str, build) -> list:
    records = []
    for index, item in enumerate(payload[key]):
        try:
            records.append(build(item))
        except (TypeError, ValueError, AttributeError, KeyError) as error:
            name = item.get("name") if isinstance(item, dict) else None
            raise ParseError(what, f"entry {index} ({name or 'unnamed'}): {error!r}",
                             json.dumps(item)[:200]) from None
    return records


# ----------------------------------------------------------------- nodes, partitions


def parse_nodes_json(text: str) -> list[Node]:
    """``scontrol show nodes --json`` -> one Node per node."""
    payload = load_json(text, "scontrol show nodes --json", "nodes")

    def build(item: dict) -> Node:
        return Node(
            name=str(item["name"]),
            address=str(item.get("address") or item["name"]),
            states=frozenset(_words(item.get("state")) or ("UNKNOWN",)),
            cpus=number(item.get("cpus"), 0) or 0,
            alloc_cpus=number(item.get("alloc_cpus"), 0) or 0,
            real_memory_mb=number(item.get("real_memory"), 0) or 0,
            alloc_memory_mb=number(item.get("alloc_memory"), 0) or 0,
            gpus=gres_count(item.get("gres", "")),
            gpus_used=gres_count(item.get("gres_used", "")),
            partitions=_words(item.get("partitions")),
            features=_words(item.get("active_features") or item.get("features")),
            reason=str(item.get("reason") or ""),
            boot_epoch_s=epoch(item.get("boot_time")),
        )

    return _records(payload, "nodes", "scontrol show nodes --json", build)


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
        )

    return _records(payload, "jobs", "squeue --json", build)


# ----------------------------------------------------------------- accounting (JSON)


def parse_accounting_json(text: str) -> list[AccountingRecord]:
    """``sacct --json [-D]`` -> one AccountingRecord per job run, steps attached."""
    payload = load_json(text, "sacct --json", "jobs")
    return _records(payload, "jobs", "sacct --json", accounting_record_from_json)


def accounting_record_from_json(item: dict) -> AccountingRecord:
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
    elif het_job and het_offset is not None:
        display = f"{het_job}+{het_offset}"
    else:
        display = str(job_id)
    nodes_text = str(item.get("nodes") or "")
    nodes = tuple(hostlist.expand(nodes_text))
    start = epoch(times.get("start"))
    steps = tuple(_step_from_json(step) for step in item.get("steps") or ())
    return AccountingRecord(
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
        nodes=nodes,
        node_count=(number(item.get("allocation_nodes"), 0) or len(nodes)) if nodes else 0,
        allocated_tres=tres((item.get("tres") or {}).get("allocated") or []),
        array_job_id=array_job,
        array_task_id=array_task if array_job else None,
        het_job_id=het_job,
        het_job_offset=het_offset if het_job else None,
        working_directory=str(item.get("working_directory") or ""),
        failed_node=str(item.get("failed_node") or ""),
        steps=steps,
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


#: A row starts with a JobIDRaw: "123", "123.batch", "123.0", "123.extern".
_ROW_START = re.compile(r"^\d+(\.[A-Za-z0-9_-]+)?\|")


def accounting_rows(lines: Iterable[str], columns: Sequence[str] = ACCOUNTING_COLUMNS,
                    *, header: bool = False) -> Iterator[list[str]]:
    """Split ``sacct --parsable2`` lines into rows of exactly ``len(columns)`` fields.

    The last column (JobName) absorbs extra '|'; a line with too few separators is
    the continuation of the previous row's JobName after a newline in the name.
    ``header``: the first line is sacct's header and must name ``columns``.
    """
    width = len(columns)
    check_start = columns[0] == "JobIDRaw"
    pending: list[str] | None = None
    iterator = iter(lines)
    if header:
        first = next(iterator, None)
        if first is None:
            return
        names = first.rstrip("\n").split("|")
        if [name.strip() for name in names] != list(columns):
            raise ParseError("sacct --parsable2 header",
                             f"expected columns {'|'.join(columns)}", first)
    for line in iterator:
        line = line.rstrip("\n")
        if line.count("|") < width - 1 or (check_start and not _ROW_START.match(line)):
            if pending is not None:
                pending[-1] += "\n" + line
                continue
            raise ParseError("sacct --parsable2 output",
                             f"row with {line.count('|') + 1} of {width} fields", line)
        if pending is not None:
            yield pending
        pending = line.split("|", width - 1)
    if pending is not None:
        yield pending


def _epoch_text(text: str) -> int | None:
    text = text.strip()
    if text.isdigit():
        value = int(text)
        return None if value in _NO_TIME else value
    return None  # "Unknown", "None", "" (SLURM_TIME_FORMAT=%s everywhere else)


def _int_text(text: str, default: int = 0) -> int:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else default


def parse_accounting_parsable2(lines: Iterable[str], columns: Sequence[str] = ACCOUNTING_COLUMNS,
                               *, header: bool = False) -> Iterator[AccountingRecord]:
    """Stream ``sacct --parsable2 -o <columns>`` (times as epoch seconds) into
    AccountingRecords; step rows (``123.batch``) are attached to their run."""
    index = {name: position for position, name in enumerate(columns)}
    missing = {"JobIDRaw", "JobID", "State"} - set(index)
    if missing:
        raise ParseError("sacct --parsable2 columns", f"missing {', '.join(sorted(missing))}")
    current: AccountingRecord | None = None
    steps: list[StepRecord] = []

    def field_(row: list[str], name: str, default: str = "") -> str:
        position = index.get(name)
        return row[position] if position is not None else default

    for row in accounting_rows(lines, columns, header=header):
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
        if not raw_id.strip().isdigit():
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
