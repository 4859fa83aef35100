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


def job_desc_from_description(description: dict[str, Any]) -> dict[str, Any]:
    """The job_desc dict sbatch would produce for these options (as the shim sees it)."""
    unknown = set(description) - DESCRIPTION_KEYS
    if unknown:
        raise UserInputError(f"unknown description keys {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(DESCRIPTION_KEYS))}")
    low, high = parse_nodes(description.get("nodes", 1))
    job: dict[str, Any] = {
        "user": description.get("user"),
        "account": description.get("account"),
        "qos": description.get("qos"),
        "partition": description.get("partition"),
        "name": description.get("name", "sim"),
        "min_nodes": low,
        "max_nodes": high,
        "num_tasks": description.get("ntasks"),
        "ntasks_per_node": description.get("ntasks_per_node"),
        "time_limit": parse_time_limit(description["time"]) if "time" in description else None,
        "requeue": None if "requeue" not in description else int(bool(description["requeue"])),
        "priority": 0 if description.get("hold") else description.get("priority"),
        "nice": description.get("nice"),
        "tres_per_node": None, "tres_per_job": None, "tres_per_task": None,
        "warn_signal": None, "warn_time": None, "warn_flags": None,
    }
    if description.get("gpus_per_node"):
        job["tres_per_node"] = f"gres/gpu:{int(description['gpus_per_node'])}"
    if description.get("gpus"):
        job["tres_per_job"] = f"gres/gpu:{int(description['gpus'])}"
    if description.get("gpus_per_task"):
        job["tres_per_task"] = f"gres/gpu:{int(description['gpus_per_task'])}"
    return job


def read_descriptions(lines: Iterable[str], source: str = "input") -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{source} line {number}: not JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise UserInputError(f"{source} line {number}: expected a JSON object")
        yield value


def simulate(config: PolicyConfig, descriptions: Iterable[dict[str, Any]]
             ) -> Iterator[dict[str, Any]]:
    """One result per description: the decision plus the description's index."""
    for index, description in enumerate(descriptions):
        submit_uid = int(description.get("submit_uid", 1000))
        if "user_id" in description or "min_nodes" in description:
            job = dict(description)  # already a job_desc dict
        else:
            job = job_desc_from_description(description)
        yield {"index": index, **decide(config, job, submit_uid).to_dict()}
