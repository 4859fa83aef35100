"""Replaying job descriptions through the policy without a cluster.

A description is one JSON object per line, either sbatch-shaped (what a user would
type) or the raw job_desc dict the shim passes (when it has ``user_id``/``min_nodes``
keys, it is used as is)::

    {"user": "alice", "account": "team-a", "qos": "training", "nodes": 2,
     "gpus_per_node": 8, "time": "1:00:00", "hold": true}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from slurmkit.errors import UserInputError
from slurmkit.policy.config import PolicyConfig
from slurmkit.policy.decide import decide
from slurmkit.spec import parse_nodes, parse_time_limit

DESCRIPTION_KEYS = {"user", "account", "qos", "partition", "nodes", "gpus_per_node", "gpus",
                    "gpus_per_task", "ntasks", "ntasks_per_node", "time", "requeue",
                    "priority", "nice", "hold", "name", "submit_uid", "signal"}


#: Bounds of counts in a description: Slurm's 32-bit fields (NO_VAL = 0xfffffffe).
_MAX_COUNT = 0xFFFFFFFD
_NICE_RANGE = (-(1 << 31) + 1, (1 << 31) - 1)


def _integer(description: dict[str, Any], key: str, low: int = 0, high: int = _MAX_COUNT
             ) -> int | None:
    value = description.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{key} = {value!r}: expected an integer from {low} to {high}")
    if not low <= value <= high:
        raise UserInputError(f"{key} = {value}: expected an integer from {low} to {high}")
    return value


def _string(description: dict[str, Any], key: str) -> str | None:
    value = description.get(key)
    if value is not None and not isinstance(value, str):
        raise UserInputError(f"{key} = {value!r}: expected a string")
    if value is not None and "\0" in value:
        raise UserInputError(f"{key}: contains a NUL byte")
    return value


def _flag(description: dict[str, Any], key: str) -> bool | None:
    value = description.get(key)
    if value is None:
        return None
    if not isinstance(value, bool) and value not in (0, 1):
        raise UserInputError(f"{key} = {value!r}: expected true or false")
    return bool(value)


def job_desc_from_description(description: dict[str, Any]) -> dict[str, Any]:
    """The job_desc dict sbatch would produce for these options (as the shim sees it).
    Every value is checked: a wrong type or an out-of-range count is a UserInputError
    naming the key."""
    unknown = set(description) - DESCRIPTION_KEYS
    if unknown:
        raise UserInputError(f"unknown description keys {', '.join(sorted(map(str, unknown)))}; "
                             f"valid: {', '.join(sorted(DESCRIPTION_KEYS))}")
    try:
        low, high = parse_nodes(description.get("nodes", 1))
    except ValueError as error:
        raise UserInputError(f"nodes = {description.get('nodes')!r}: {error}") from None
    time_limit = None
    if "time" in description:
        try:
            time_limit = parse_time_limit(description["time"])
        except ValueError as error:
            raise UserInputError(f"time = {description['time']!r}: {error}") from None
    requeue = _flag(description, "requeue")
    gpus = {key: _integer(description, key) for key in ("gpus_per_node", "gpus", "gpus_per_task")}
    job: dict[str, Any] = {
        "user": _string(description, "user"),
        "account": _string(description, "account"),
        "qos": _string(description, "qos"),
        "partition": _string(description, "partition"),
        "name": _string(description, "name") or "sim",
        "min_nodes": low,
        "max_nodes": high,
        "num_tasks": _integer(description, "ntasks"),
        "ntasks_per_node": _integer(description, "ntasks_per_node"),
        "time_limit": time_limit,
        "requeue": None if requeue is None else int(requeue),
        "priority": 0 if _flag(description, "hold") else _integer(description, "priority"),
        "nice": _integer(description, "nice", *_NICE_RANGE),
        "tres_per_node": None, "tres_per_job": None, "tres_per_task": None,
        "warn_signal": None, "warn_time": None, "warn_flags": None,
    }
    _string(description, "signal")
    if gpus["gpus_per_node"]:
        job["tres_per_node"] = f"gres/gpu:{gpus['gpus_per_node']}"
    if gpus["gpus"]:
        job["tres_per_job"] = f"gres/gpu:{gpus['gpus']}"
    if gpus["gpus_per_task"]:
        job["tres_per_task"] = f"gres/gpu:{gpus['gpus_per_task']}"
    return job


def read_descriptions(lines: Iterable[str], source: str = "input") -> Iterator[dict[str, Any]]:
    """One JSON object per line; blank lines and ``#`` comments skipped. A line that
    is not a JSON object is a UserInputError naming the line."""
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{source} line {number}: not JSON ({error.msg})") from None
        except RecursionError:
            raise UserInputError(f"{source} line {number}: nested too deeply") from None
        if not isinstance(value, dict):
            raise UserInputError(f"{source} line {number}: expected a JSON object")
        yield value


def simulate(config: PolicyConfig, descriptions: Iterable[dict[str, Any]]
             ) -> Iterator[dict[str, Any]]:
    """One result per description: the decision plus the description's index. A
    malformed description raises UserInputError naming its index."""
    for index, description in enumerate(descriptions):
        try:
            submit_uid = _integer(description, "submit_uid")
            if "user_id" in description or "min_nodes" in description:
                job = dict(description)  # already a job_desc dict
            else:
                job = job_desc_from_description(description)
        except UserInputError as error:
            raise UserInputError(f"job description {index}: {error}") from None
        yield {"index": index, **decide(config, job, 1000 if submit_uid is None
                                        else submit_uid).to_dict()}
