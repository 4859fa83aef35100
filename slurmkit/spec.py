"""JobSpec: what a user wants to run, typed and validated.

A spec comes from a TOML file, ``SLURMKIT_*`` variables and command-line flags, in
increasing precedence, merged by ``build_spec``. Every problem is reported at once,
each naming the key, the bad value and what would be valid; unknown keys list the
valid ones. Templates only lay a JobSpec out; they never decide anything.

The schema is one table: each JobSpec field that a user sets carries a ``Key`` in its
metadata (its name in the spec, help text, the kinds it applies to, converter,
default, command-line flags). ``KEYS`` collects them; the valid keys, their defaults,
``build_spec``'s checks and the Click flags of ``submit``/``render``
(``slurmkit.cli._spec_options``) are all derived from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from slurmkit.errors import UserInputError

KINDS = ("training", "inference", "batch")
LAUNCHERS = ("srun", "torchrun")
#: How a training job comes back from a lost node: ``in-place`` (slurmkit.launch
#: restarts it on the survivors or a spare within seconds, inside the allocation) or
#: ``requeue`` (Slurm requeues it once it has declared the node DOWN: minutes).
RESTARTS = ("in-place", "requeue")
PLACEMENTS = ("auto", "none")

#: Signals a job may ask to be warned with. USR1 is excluded: NCCL uses it.
WARNING_SIGNALS = ("USR2", "TERM", "INT", "HUP", "URG", "QUIT", "ALRM", "XCPU")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+-]+$")  # partition/account/qos names
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARRAY_RE = re.compile(r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$", re.ASCII)

#: Largest node count a spec may ask for. Slurm keeps node counts in 32 bits and the
#: largest Slurm clusters have tens of thousands of nodes; the bound keeps every loop
#: and allocation sized by a count small (a 20-digit count used to hang placement).
MAX_NODES = 1_000_000
#: Largest time limit in minutes: below Slurm's INFINITE/NO_VAL (0xfffffffe).
MAX_TIME_MIN = 0xFFFFFFFD

# ----------------------------------------------------------------- value parsers


def parse_time_limit(text: str | int) -> int | None:
    """Slurm's time formats -> minutes (seconds rounded up); None for UNLIMITED."""
    if isinstance(text, bool):
        raise ValueError("expected a Slurm time, not true/false")
    if isinstance(text, int):
        if not 0 < text <= MAX_TIME_MIN:
            raise ValueError(f"must be between 1 and {MAX_TIME_MIN} minutes")
        return text
    if not isinstance(text, str):
        raise ValueError("expected a Slurm time such as \"1-00:00:00\"")
    value = text.strip()
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    # ASCII digits only (int() takes any script's digits, sbatch does not), and short
    # enough that int() never sees thousands of digits.
    match = re.fullmatch(r"(?:([0-9]{1,7})-)?([0-9]{1,10})(?::([0-9]{1,10}))?(?::([0-9]{1,10}))?",
                         value)
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
    if -(-total_s // 60) > MAX_TIME_MIN:
        raise ValueError(f"longer than Slurm's largest time limit ({MAX_TIME_MIN} minutes); "
                         "use UNLIMITED")
    return -(-total_s // 60)


def parse_min_max(value: Any, *, noun: str, most: int) -> tuple[int, int]:
    """``4`` or ``"2-4"`` -> (min, max): the one reading of an elastic count, for a
    job's nodes and a service's replicas alike."""
    example = 'e.g. 4 or "2-4"'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'expected N or "MIN-MAX" ({example})')
    if isinstance(value, int):
        low = high = value
    else:
        # ASCII digits, at most 10 of them: the bound below is checked on small ints.
        match = re.fullmatch(r"\s*([0-9]{1,10})\s*(?:-\s*([0-9]{1,10})\s*)?", value)
        if not match:
            if re.fullmatch(r"\s*[0-9]+\s*(-\s*[0-9]+\s*)?", value):
                raise ValueError(f"at most {most} {noun}")
            raise ValueError(f'expected N or "MIN-MAX" ({example})')
        low = int(match[1])
        high = int(match[2]) if match[2] else low
    if low < 1:
        raise ValueError(f"MIN must be at least 1 (no {noun}, nothing runs)")
    if high < low:
        raise ValueError(f'MIN ({low}) is above MAX ({high}): write "{high}-{low}"')
    if high > most:
        raise ValueError(f"at most {most} {noun}")
    return low, high


def parse_nodes(value: str | int) -> tuple[int, int]:
    """``4`` or ``"2-4"`` -> (min, max) nodes."""
    return parse_min_max(value, noun="nodes", most=MAX_NODES)


def parse_env_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (value may contain anything, '=' included)."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME_RE.match(name):
        raise ValueError(f"expected NAME=VALUE with NAME matching {_ENV_NAME_RE.pattern}")
    return name, value


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


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high] (bools refused, ASCII digits only). A class, not a
    closure, so that the CLI derives its flag's range from it."""

    low: int
    high: int

    def __call__(self, value):
        message = f"expected an integer between {self.low} and {self.high}"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(message)
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?[0-9]{1,20}\s*", value):
            raise ValueError(message)
        number = int(value)
        if not self.low <= number <= self.high:
            raise ValueError(message)
        return number


def to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (the CLI makes it a click.Choice)."""

    choices: tuple[str, ...]

    def __call__(self, value):
        if value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return value


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


def env_table(value):
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


# ----------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """One key of a job spec: how it is given, checked and explained. Held in the
    metadata of the JobSpec field it fills (``_key``); ``KEYS`` lists them all.

    ``convert`` turns the raw value (TOML, ``SLURMKIT_*`` or a flag) into the field's
    value, raising ValueError that says what would be valid; a key that fills several
    fields (``nodes``) returns a tuple. The default is the field's own, or
    ``default_from`` the other values (the kind, the command...). ``flags`` are the
    Click declarations (``"--a/--b"`` for a true/false key); ``flag_type`` names a
    command-line spelling other than the spec's (``"memory"``: sbatch's sizes, 64G).
    ``env``: ``SLURMKIT_<KEY>`` may set it.
    """

    help: str
    convert: Callable[[Any], Any]
    name: str = ""  # the key in the spec; default: the field's name
    kinds: tuple[str, ...] = KINDS
    default_from: Callable[[dict[str, Any]], Any] | None = None
    required: str | None = None  # the error when the key is missing
    flags: tuple[str, ...] = ()
    flag_type: str | None = None
    env: bool = False
    targets: tuple[str, ...] = ()  # the JobSpec fields it fills (set from the dataclass)

    def describe(self) -> str:
        """The help text, with the kinds it is limited to and its variable."""
        text = self.help
        if self.kinds != KINDS:
            text = f"{text.rstrip('.')} ({', '.join(self.kinds)})."
        if self.env:
            text += f" Env: SLURMKIT_{self.name.upper()}."
        return text


def _key(default: Any = None, **key: Any):
    """A JobSpec field that users set: its default and its ``Key``."""
    return field(default=default, metadata={"key": Key(**key)})


@dataclass(frozen=True)
class JobSpec:
    """A validated job. Times in minutes/seconds as named; None = Slurm's default.

    Fields without a ``Key`` are derived (``nodes_max`` is filled by ``nodes``).
    Build it with ``build_spec``, which applies the kind-dependent defaults.
    """

    kind: str = _key(
        "batch", help="Workload kind.", convert=Choice(KINDS), flags=("--kind",))
    job_name: str = _key(
        "slurmkit", help="Job name (sbatch -J; default: the program's name).",
        convert=_text("job name"), flags=("-J", "--job-name"),
        default_from=lambda values: Path(values["command"][0]).name if values["command"]
        else "slurmkit")
    command: tuple[str, ...] = _key(
        (), help="The program and its arguments, e.g. [\"python\", \"train.py\"] "
        "(on the command line: after --).", convert=_argv,
        required="command is missing: give it in the spec (command = [\"python\", "
                 "\"train.py\"]) or after -- on the command line")
    nodes_min: int = _key(
        1, name="nodes", help="Nodes: N or elastic MIN-MAX.", convert=parse_nodes,
        flags=("-N", "--nodes"), targets=("nodes_min", "nodes_max"))
    nodes_max: int = 1
    partition: str | None = _key(
        help="Partition(s), comma-separated.", convert=_slurm_name("partition"),
        flags=("-p", "--partition"), env=True)
    time_limit_min: int | None = _key(
        name="time_limit", help="Time limit (Slurm format: MIN, H:M:S, D-H, D-H:M, "
        "D-H:M:S or UNLIMITED).", convert=parse_time_limit, flags=("-t", "--time"))
    account: str | None = _key(
        help="Account (queue).", convert=_slurm_name("account"), flags=("-A", "--account"),
        env=True)
    qos: str | None = _key(
        help="QOS.", convert=_slurm_name("qos"), flags=("-q", "--qos"), env=True)
    gpus_per_node: int = _key(
        0, help="GPUs per node.", convert=IntRange(0, 64), flags=("--gpus-per-node",))
    ntasks_per_node: int | None = _key(
        help="Tasks per node (default: one per GPU for srun training, else 1).",
        convert=IntRange(1, 4096), flags=("--ntasks-per-node",))
    cpus_per_task: int | None = _key(
        help="CPUs per task.", convert=IntRange(1, 4096), flags=("-c", "--cpus-per-task"))
    mem_per_node_mb: int | None = _key(
        help="Memory per node: MB in a spec file; on the command line as sbatch --mem "
        "(4000, 4000M, 64G, 1T).", convert=IntRange(1, 1 << 40), flags=("--mem",),
        flag_type="memory")
    exclusive: bool = _key(
        False, help="Whole nodes (default for training) or shared.", convert=to_bool,
        flags=("--exclusive/--shared",),
        default_from=lambda values: values["kind"] == "training")
    requeue: bool = _key(
        False, help="Requeue on node failure or preemption (default for training and "
        "inference).", convert=to_bool, flags=("--requeue/--no-requeue",),
        default_from=lambda values: values["kind"] in ("training", "inference"))
    output: str | None = _key(
        help="Output file (a literal path; % is not a pattern).", convert=_text("output"),
        flags=("-o", "--output"))
    chdir: str | None = _key(
        help="Working directory of the job.", convert=_text("chdir"), flags=("-D", "--chdir"))
    constraint: str | None = _key(
        help="Node features (sbatch --constraint).", convert=_text("constraint"),
        flags=("--constraint",))
    signal: str | None = _key(
        help="Warning signal before the time limit: " + ", ".join(WARNING_SIGNALS)
        + " (USR2 for training and inference; never USR1, NCCL's).", convert=_signal,
        flags=("--signal",),
        default_from=lambda values: "USR2" if values["kind"] in ("training", "inference") else None)
    signal_lead_s: int = _key(
        120, help="Seconds of warning before the time limit (120 for training, else 60).",
        convert=IntRange(1, 65535), flags=("--signal-lead",),
        default_from=lambda values: 120 if values["kind"] == "training" else 60)
    placement: str = _key(
        "auto", help="auto: topology-aware; none: leave it to Slurm.",
        convert=Choice(PLACEMENTS), flags=("--placement",))
    switches_wait_min: int = _key(
        30, help="Longest wait for a tighter switch count, in minutes.",
        convert=IntRange(0, 7 * 24 * 60))
    env: tuple[tuple[str, str], ...] = _key(
        (), help="Environment variables to export to the job: a table in a spec file; "
        "NAME=VALUE, repeatable, on the command line (added to the file's).",
        convert=env_table, flags=("--export",))
    # training
    checkpoint_dir: str | None = _key(
        help="Checkpoint directory.", convert=_text("checkpoint_dir"), kinds=("training",),
        flags=("--checkpoint-dir",))
    launcher: str = _key(
        "srun", help="srun or torchrun.", convert=Choice(LAUNCHERS), kinds=("training",),
        flags=("--launcher",))
    nproc_per_node: int | None = _key(
        help="torchrun processes per node; by default the GPUs per node.",
        convert=IntRange(1, 1024), kinds=("training",), flags=("--nproc-per-node",))
    master_port: int = _key(
        29500, help="torchrun's rendezvous port.", convert=IntRange(1024, 65535),
        kinds=("training",))
    log_dir: str | None = _key(
        help="Directory of the per-run, per-task logs.", convert=_text("log_dir"),
        kinds=("training",), flags=("--log-dir",))
    restart: str = _key(
        "requeue", help="After a lost node: in-place (seconds; the default with a "
        "checkpoint dir) or requeue.", convert=Choice(RESTARTS), kinds=("training",),
        flags=("--restart",),
        default_from=lambda values: "in-place" if values["kind"] == "training"
        and values["checkpoint_dir"] else "requeue")
    spares: int = _key(
        0, help="Hot spare nodes held for in-place restarts.", convert=IntRange(0, 1024),
        kinds=("training",), flags=("--spares",))
    # inference
    replicas: int | None = _key(
        help="Service replicas, one task each; the node count unless nodes is given.",
        convert=IntRange(1, 100000), kinds=("inference",), flags=("--replicas",))
    port: int | None = _key(
        help="Port each replica listens on.", convert=IntRange(1, 65535),
        kinds=("inference",), flags=("--port",))
    # batch
    array: str | None = _key(
        help="Array spec, e.g. 0-99%10.", convert=_array, kinds=("batch",),
        flags=("--array",))

    @property
    def elastic(self) -> bool:
        return self.nodes_max > self.nodes_min

    @property
    def allocated_nodes_min(self) -> int:
        """Nodes the allocation needs: training nodes plus hot spares."""
        return self.nodes_min + self.spares

    @property
    def allocated_nodes_max(self) -> int:
        return self.nodes_max + self.spares

    @property
    def tasks_per_node(self) -> int:
        """Tasks per node as launched: explicit, else one per GPU (srun training), else 1."""
        if self.ntasks_per_node:
            return self.ntasks_per_node
        if self.kind == "training" and self.launcher == "srun" and self.gpus_per_node:
            return self.gpus_per_node
        return 1


def _collect_keys() -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for spec_field in fields(JobSpec):
        key = spec_field.metadata.get("key")
        if key is not None:
            name = key.name or spec_field.name
            keys[name] = replace(key, name=name, targets=key.targets or (spec_field.name,))
    return keys


#: Every spec key, in the order they are checked and listed (``--help``).
KEYS: dict[str, Key] = _collect_keys()
#: SLURMKIT_* variables that may fill spec keys (below flags, above the file).
ENV_KEYS = tuple(name for name, key in KEYS.items() if key.env)
_DEFAULTS = {spec_field.name: spec_field.default for spec_field in fields(JobSpec)}


def valid_keys(kind: str | None = None) -> list[str]:
    return sorted(name for name, key in KEYS.items() if kind not in KINDS or kind in key.kinds)


# ----------------------------------------------------------------- building


def load_toml(path: Path) -> dict[str, Any]:
    """The spec file: a regular file of at most 1 MiB of UTF-8 TOML (see
    ``slurmkit.files``: FIFOs, devices, symlink loops are refused, never waited on)."""
    from slurmkit import files

    return files.load_toml(path, "spec file")


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    return {key: environ[f"SLURMKIT_{key.upper()}"] for key in ENV_KEYS
            if environ.get(f"SLURMKIT_{key.upper()}")}


def load_spec(path: str | Path | None, overrides: Mapping[str, Any] | None = None, *,
              environ: Mapping[str, str] | None = None) -> JobSpec:
    """The spec file at ``path`` (None: flags only) with ``overrides`` (flag values,
    None = not given) on top; an ``env`` override adds to the file's table."""
    file_values = load_toml(Path(path)) if path else {}
    overrides = dict(overrides or {})
    if overrides.get("env") is not None and file_values.get("env") is not None:
        try:
            merged = dict(env_table(file_values["env"]))
            merged.update(env_table(overrides["env"]))
        except (ValueError, TypeError):
            # Not merged: build_spec reports the bad table (the file's unless the
            # flags' own is bad too).
            if _is_valid(env_table, overrides["env"]):
                overrides["env"] = None
        else:
            overrides["env"] = list(merged.items())
    return build_spec(file_values, overrides, source=str(path) if path else "command-line flags",
                      environ=environ)


def _is_valid(convert, value) -> bool:
    try:
        convert(value)
    except (ValueError, TypeError):
        return False
    return True


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

    for name in sorted(set(raw) - set(KEYS)):
        errors.append(f"unknown key {name!r}; valid keys: {', '.join(valid_keys())}")

    def check(key: Key) -> bool:
        """Convert the raw value into ``values``; False when it is missing or bad."""
        if key.name not in raw:
            if key.required:
                errors.append(key.required)
            return False
        try:
            value = key.convert(raw[key.name])
        except (ValueError, TypeError) as error:
            errors.append(f"{key.name} = {raw[key.name]!r}: {error}")
            return False
        values.update(zip(key.targets, value if len(key.targets) > 1 else (value,),
                          strict=True))
        return True

    values: dict[str, Any] = dict(_DEFAULTS)
    check(KEYS["kind"])  # a bad kind is reported, then checked as the default (batch)
    kind = values["kind"]
    for name in sorted(raw):
        key = KEYS.get(name)
        if key is not None and kind not in key.kinds:
            errors.append(f"{name!r} applies to kind = {' or '.join(map(repr, key.kinds))}, "
                          f"not {kind!r}")
    given = {name for name, key in KEYS.items() if name != "kind" and check(key)}
    for name, key in KEYS.items():
        if name not in given and key.default_from is not None:
            values[key.targets[0]] = key.default_from(values)

    # Rules between keys.
    if kind == "training":
        if values["restart"] == "in-place" and not values["checkpoint_dir"]:
            errors.append("restart = \"in-place\" needs a checkpoint_dir (its events and "
                          "fencing live there); set checkpoint_dir or restart = \"requeue\"")
        if values["spares"] and values["restart"] != "in-place":
            errors.append(f"spares = {values['spares']}: hot spares are used by in-place "
                          "restarts only; set restart = \"in-place\"")
    if kind == "inference" and values["replicas"] and "nodes" not in raw:
        values["nodes_min"] = values["nodes_max"] = values["replicas"]
    if values["time_limit_min"] and values["signal"] and \
            values["signal_lead_s"] >= values["time_limit_min"] * 60:
        errors.append(f"signal_lead_s = {values['signal_lead_s']} is not shorter than "
                      f"time_limit ({values['time_limit_min']} min)")
    if errors:
        raise UserInputError(f"invalid job spec ({source}):\n  " + "\n  ".join(errors))
    return JobSpec(**values)
