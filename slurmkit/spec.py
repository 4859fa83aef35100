"""JobSpec: what a user wants to run, typed and validated.

A spec comes from a TOML file, ``SLURMKIT_*`` variables and command-line flags, in
increasing precedence, merged by ``build_spec``. Every problem is reported at once,
each naming the key, the bad value and what would be valid; unknown keys list the
valid ones. Templates only lay a JobSpec out; they never decide anything.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from slurmkit.errors import UserInputError

KINDS = ("training", "inference", "batch")
LAUNCHERS = ("srun", "torchrun")
PLACEMENTS = ("auto", "none")

#: Signals a job may ask to be warned with. USR1 is excluded: NCCL uses it.
WARNING_SIGNALS = ("USR2", "TERM", "INT", "HUP", "URG", "QUIT", "ALRM", "XCPU")

_COMMON_KEYS = {
    "kind": "training | inference | batch",
    "job_name": "job name (sbatch -J)",
    "command": "argv list to run, e.g. [\"python\", \"train.py\"]",
    "nodes": "node count N or elastic range \"MIN-MAX\"",
    "partition": "partition name(s), comma-separated",
    "account": "Slurm account (queue)",
    "qos": "quality of service",
    "time_limit": "Slurm time: MIN, H:M:S, D-H, D-H:M, D-H:M:S",
    "gpus_per_node": "GPUs per node (integer)",
    "ntasks_per_node": "tasks per node (integer)",
    "cpus_per_task": "CPUs per task (integer)",
    "mem_per_node_mb": "memory per node in MB (integer)",
    "exclusive": "whole nodes (true/false)",
    "output": "literal path of the job's output file",
    "chdir": "working directory of the job",
    "env": "table of environment variables to export",
    "requeue": "requeue on node failure or preemption (true/false)",
    "constraint": "node features (sbatch --constraint)",
    "placement": "auto (topology-aware) | none",
    "switches_wait_min": "longest wait for a tighter switch count (minutes)",
    "signal": "warning signal before the time limit: " + ", ".join(WARNING_SIGNALS),
    "signal_lead_s": "seconds before the time limit the warning signal comes",
}
_KIND_KEYS = {
    "training": {
        "checkpoint_dir": "directory of the job's checkpoints",
        "launcher": "srun | torchrun",
        "nproc_per_node": "processes per node for torchrun",
        "master_port": "rendezvous port (integer)",
        "log_dir": "directory of the per-run, per-task logs",
    },
    "inference": {
        "replicas": "number of service replicas (one task each)",
        "port": "port each replica listens on",
    },
    "batch": {
        "array": "array spec, e.g. \"0-99%10\"",
    },
}
_ALL_KEYS = {**_COMMON_KEYS, **{k: v for keys in _KIND_KEYS.values() for k, v in keys.items()}}

_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+-]+$")  # partition/account/qos names
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARRAY_RE = re.compile(r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$")


@dataclass(frozen=True)
class JobSpec:
    """A validated job. Times in minutes/seconds as named; None = Slurm's default."""

    kind: str
    job_name: str
    command: tuple[str, ...]
    nodes_min: int = 1
    nodes_max: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit_min: int | None = None
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_per_node_mb: int | None = None
    exclusive: bool = False
    output: str | None = None
    chdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    requeue: bool = False
    constraint: str | None = None
    placement: str = "auto"
    switches_wait_min: int = 30
    signal: str | None = None
    signal_lead_s: int = 120
    # training
    checkpoint_dir: str | None = None
    launcher: str = "srun"
    nproc_per_node: int | None = None
    master_port: int = 29500
    log_dir: str | None = None
    # inference
    replicas: int | None = None
    port: int | None = None
    # batch
    array: str | None = None

    @property
    def elastic(self) -> bool:
        return self.nodes_max > self.nodes_min

    @property
    def tasks_per_node(self) -> int:
        """Tasks per node as launched: explicit, else one per GPU (srun training), else 1."""
        if self.ntasks_per_node:
            return self.ntasks_per_node
        if self.kind == "training" and self.launcher == "srun" and self.gpus_per_node:
            return self.gpus_per_node
        return 1


def valid_keys(kind: str | None = None) -> list[str]:
    if kind in _KIND_KEYS:
        return sorted({*_COMMON_KEYS, *_KIND_KEYS[kind]})
    return sorted(_ALL_KEYS)


# ----------------------------------------------------------------- value parsers


def parse_time_limit(text: str | int) -> int | None:
    """Slurm's time formats -> minutes (seconds rounded up); None for UNLIMITED."""
    if isinstance(text, bool):
        raise ValueError("expected a Slurm time, not true/false")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError("must be positive")
        return text
    value = str(text).strip()
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError("expected MIN, MIN:SEC, H:M:S, D-H, D-H:M or D-H:M:S")
    days, first, second, third = match.groups()
    days_i = int(days) if days else 0
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # H:M:S
        hours, minutes, seconds = int(first), int(second), int(third)
    elif second is not None:  # M:S
        hours, minutes, seconds = 0, int(first), int(second)
    else:  # M
        hours, minutes, seconds = 0, int(first), 0
    if minutes >= 60 and (days is not None or third is not None) or seconds >= 60:
        raise ValueError("minutes and seconds must be below 60")
    total_s = ((days_i * 24 + hours) * 60 + minutes) * 60 + seconds
    if total_s <= 0:
        raise ValueError("must be positive")
    return -(-total_s // 60)


def parse_nodes(value: str | int) -> tuple[int, int]:
    """``4`` or ``"2-4"`` -> (min, max)."""
    if isinstance(value, bool):
        raise ValueError("expected N or MIN-MAX")
    if isinstance(value, int):
        low = high = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(value))
        if not match:
            raise ValueError("expected N or MIN-MAX, e.g. 4 or 2-4")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
    if low < 1:
        raise ValueError("at least 1 node")
    if high < low:
        raise ValueError(f"MAX ({high}) is below MIN ({low})")
    return low, high


def parse_env_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (value may contain anything, '=' included)."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME_RE.match(name):
        raise ValueError(f"expected NAME=VALUE with NAME matching {_ENV_NAME_RE.pattern}")
    return name, value


# ----------------------------------------------------------------- building


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UserInputError(f"spec file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"{path}: not valid TOML: {error}") from None


#: SLURMKIT_* variables that may fill spec keys (below flags, above the file).
ENV_KEYS = ("account", "partition", "qos")


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    return {key: environ[f"SLURMKIT_{key.upper()}"] for key in ENV_KEYS
            if environ.get(f"SLURMKIT_{key.upper()}")}


def build_spec(file_values: Mapping[str, Any] | None = None,
               overrides: Mapping[str, Any] | None = None, *,
               source: str = "the spec", environ: Mapping[str, str] | None = None) -> JobSpec:
    """Merge file < SLURMKIT_* < overrides, validate everything, return a JobSpec.

    ``overrides`` holds flag values (None = not given). Raises UserInputError listing
    every problem, each prefixed with ``source`` (the file name).
    """
    raw: dict[str, Any] = dict(file_values or {})
    raw.update(env_overrides(environ))
    raw.update({key: value for key, value in (overrides or {}).items() if value is not None})
    errors: list[str] = []

    unknown = sorted(set(raw) - set(_ALL_KEYS))
    for key in unknown:
        errors.append(f"unknown key {key!r}; valid keys: {', '.join(valid_keys())}")

    kind = raw.get("kind", "batch")
    if kind not in KINDS:
        errors.append(f"kind = {kind!r}: expected one of {', '.join(KINDS)}")
        kind = "batch"
    for other_kind, keys in _KIND_KEYS.items():
        if other_kind != kind:
            for key in sorted(set(raw) & set(keys) - set(_KIND_KEYS[kind])):
                errors.append(f"{key!r} applies to kind = {other_kind!r}, not {kind!r}")

    values: dict[str, Any] = {"kind": kind}

    def check(key: str, convert, *, default=None):
        if key not in raw:
            return default
        try:
            return convert(raw[key])
        except (ValueError, TypeError) as error:
            errors.append(f"{key} = {raw[key]!r}: {error}")
            return default

    values["command"] = check("command", _argv, default=())
    if not values["command"]:
        if "command" not in raw:
            errors.append("command is missing: give it in the spec (command = [\"python\", "
                          "\"train.py\"]) or after -- on the command line")
    values["job_name"] = check("job_name", _text("job name"), default=None) or (
        Path(values["command"][0]).name if values["command"] else "slurmkit")
    nodes = check("nodes", parse_nodes, default=(1, 1))
    values["nodes_min"], values["nodes_max"] = nodes
    for key in ("partition", "account", "qos"):
        values[key] = check(key, _slurm_name(key))
    values["time_limit_min"] = check("time_limit", parse_time_limit)
    values["gpus_per_node"] = check("gpus_per_node", _int_range(0, 64), default=0)
    for key in ("ntasks_per_node", "cpus_per_task"):
        values[key] = check(key, _int_range(1, 4096))
    values["mem_per_node_mb"] = check("mem_per_node_mb", _int_range(1, 1 << 40))
    values["exclusive"] = check("exclusive", _bool, default=kind == "training")
    values["requeue"] = check("requeue", _bool, default=kind in ("training", "inference"))
    for key in ("output", "chdir", "checkpoint_dir", "log_dir"):
        values[key] = check(key, _text(key))
    values["constraint"] = check("constraint", _text("constraint"))
    values["env"] = check("env", _env_table, default=())
    values["placement"] = check("placement", _choice(PLACEMENTS), default="auto")
    values["switches_wait_min"] = check("switches_wait_min", _int_range(0, 7 * 24 * 60),
                                        default=30)
    default_signal = {"training": "USR2", "inference": "USR2"}.get(kind)
    values["signal"] = check("signal", _signal, default=default_signal)
    values["signal_lead_s"] = check("signal_lead_s", _int_range(1, 65535),
                                    default=120 if kind == "training" else 60)
    values["launcher"] = check("launcher", _choice(LAUNCHERS), default="srun")
    values["nproc_per_node"] = check("nproc_per_node", _int_range(1, 1024))
    values["master_port"] = check("master_port", _int_range(1024, 65535), default=29500)
    values["replicas"] = check("replicas", _int_range(1, 100000))
    values["port"] = check("port", _int_range(1, 65535))
    values["array"] = check("array", _array)
    if kind == "batch" and values["array"] and values["requeue"] and "requeue" in raw:
        pass  # arrays may be requeued; nothing to check
    if kind == "inference" and values["replicas"] and "nodes" not in raw:
        values["nodes_min"] = values["nodes_max"] = values["replicas"]
    if values.get("signal_lead_s") and values["time_limit_min"] and values["signal"] and \
            values["signal_lead_s"] >= values["time_limit_min"] * 60:
        errors.append(f"signal_lead_s = {values['signal_lead_s']} is not shorter than "
                      f"time_limit ({values['time_limit_min']} min)")
    if errors:
        raise UserInputError(f"invalid job spec ({source}):\n  " + "\n  ".join(errors))
    return JobSpec(**values)


# ----------------------------------------------------------------- converters


def _reject_control(text: str, what: str) -> str:
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte")
    return text


def _text(what: str):
    def convert(value):
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a non-empty string for {what}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"{what} must be a single line")
        return _reject_control(value, what)
    return convert


def _slurm_name(what: str):
    def convert(value):
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise ValueError(f"expected a Slurm {what} name (letters, digits, _.,+-)")
        return value
    return convert


def _argv(value):
    if isinstance(value, str):
        raise ValueError("expected a list of arguments, e.g. [\"python\", \"train.py\"]; "
                         "a single string would need a shell")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a non-empty list of arguments")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"argument {item!r} is not a string")
        _reject_control(item, "an argument")
    if not value[0]:
        raise ValueError("the program name is empty")
    return tuple(value)


def _int_range(low: int, high: int):
    def convert(value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected an integer between {low} and {high}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer between {low} and {high}") from None
        if not low <= number <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return number
    return convert


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("expected true or false")


def _choice(choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return convert


def _signal(value):
    if not isinstance(value, str):
        raise ValueError("expected a signal name")
    name = value.upper().removeprefix("SIG")
    if name == "USR1":
        raise ValueError("SIGUSR1 is used by NCCL; use USR2 (the default) or TERM")
    if name not in WARNING_SIGNALS:
        raise ValueError(f"expected one of {', '.join(WARNING_SIGNALS)}")
    return name


def _array(value):
    if not isinstance(value, str) or not _ARRAY_RE.match(value.replace(" ", "")):
        raise ValueError("expected an array spec like \"0-99\", \"1,3,5-7\" or \"0-99%10\"")
    return value.replace(" ", "")


def _env_table(value):
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [parse_env_assignment(item) if isinstance(item, str) else item for item in value]
    else:
        raise ValueError("expected a table of NAME = \"value\"")
    result = []
    for name, item in items:
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ValueError(f"{name}: expected a string value")
        result.append((name, _reject_control(str(item), f"env {name}")))
    return tuple(result)


def spec_fields() -> list[str]:
    return [spec_field.name for spec_field in fields(JobSpec)]
