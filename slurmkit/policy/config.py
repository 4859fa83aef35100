"""The admin's policy configuration (TOML), validated.

```toml
[defaults]
gpus_per_node = 8
nodes = "c[1-4]"          # the nodes the queues share

[classes.inference]
priority = 1000           # QOS priority: the order pending jobs start in
rank = 3                  # borrowed work of a higher rank preempts lower ranks
grace_s = 30              # warning before a borrowed job of this class is requeued
max_time_min = 1440

[classes.training]
priority = 100
rank = 2
grace_s = 60

[queues.team-a]           # a virtual queue is a Slurm account
guaranteed_gpus = 16      # never preempted while within this
borrow_limit_gpus = 16    # idle capacity it may borrow beyond, preemptible
classes = ["inference", "training"]
users = ["alice", "carol"]
```

Slurm shape (see ``slurmconf``): one guaranteed partition per queue (``guar-<queue>``,
AllowAccounts, partition QOS ``GrpTRES=gres/gpu=<guaranteed>``, never preempted) and
one borrowed partition per class (``borrow-<class>``, open to every queue,
``PreemptMode=REQUEUE``, ``GraceTime`` of the class, ``PriorityTier`` from the rank),
all on the same nodes, with ``PreemptType=preempt/partition_prio``. The account's
``GrpTRES`` caps guaranteed + borrowed.
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostlist as _hostlist

from slurmkit.errors import UserInputError

# Matched with fullmatch: ``$`` would also accept a trailing newline, which would end a
# slurm.conf line early.
_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,30}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
#: What a hostlist in slurm.conf's ``Nodes=`` may contain: no space or '#' (they end
#: the value) and no control character (a newline would start a new line).
_HOSTLIST_CHARS_RE = re.compile(r"[A-Za-z0-9._\[\],-]{1,8192}")
WARNING_SIGNALS = {"USR2": 12, "TERM": 15, "URG": 23, "INT": 2, "HUP": 1}
#: A policy is a few kilobytes; anything this large is not one (and must not be read
#: whole into slurmctld).
MAX_POLICY_BYTES = 1 << 20

_shown = reprlib.Repr()
_shown.maxlevel, _shown.maxstring, _shown.maxother = 3, 60, 60
_shown.maxlist = _shown.maxtuple = _shown.maxdict = _shown.maxset = 6


def _show(value: Any) -> str:
    """A short, escaped rendering of a bad value for an error message (no control
    characters, bounded length and depth)."""
    try:
        return _shown.repr(value)
    except Exception:  # e.g. an int too long to print (sys.set_int_max_str_digits)
        return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class WorkloadClass:
    name: str
    priority: int
    rank: int
    grace_s: int
    max_time_min: int | None = None
    default_time_min: int | None = None
    borrow: bool = True  # may run on borrowed (preemptible) capacity
    signal: str = "USR2"  # sent at preemption (and before the time limit)

    @property
    def qos(self) -> str:
        return self.name

    @property
    def borrow_partition(self) -> str:
        return f"borrow-{self.name}"


@dataclass(frozen=True)
class Queue:
    name: str
    guaranteed_gpus: int
    borrow_limit_gpus: int
    classes: tuple[str, ...]
    users: tuple[str, ...]
    default_class: str

    @property
    def partition(self) -> str:
        return f"guar-{self.name}"

    @property
    def quota_qos(self) -> str:
        return f"quota-{self.name}"

    def admits(self, user: str) -> bool:
        return "*" in self.users or user in self.users


@dataclass(frozen=True)
class PolicyConfig:
    classes: dict[str, WorkloadClass]
    queues: dict[str, Queue]
    gpus_per_node: int
    nodes: str
    operators: tuple[str, ...] = ("root", "slurm")
    unmanaged_accounts: str = "reject"  # or "allow": accounts outside the policy pass
    source: str = "policy"
    #: Number of nodes in ``nodes`` (None for "ALL": unknown to the policy).
    node_count: int | None = None

    def queues_of(self, user: str) -> list[Queue]:
        return [queue for queue in self.queues.values() if queue.admits(user)]

    @property
    def partitions(self) -> list[str]:
        return [queue.partition for queue in self.queues.values()] + \
            [cls.borrow_partition for cls in self.classes.values() if cls.borrow]


def load(path: str | Path) -> PolicyConfig:
    """Read and validate a policy file. Every problem (missing, unreadable, not a
    regular file, too large, not UTF-8, not TOML, wrong shape or type) raises
    UserInputError naming the file, the key and the fix; nothing else is raised."""
    path = Path(path)
    return loads(read_policy_file(path), source=str(path))


def read_policy_file(path: Path) -> bytes:
    """The bytes of a policy file, or UserInputError (missing, unreadable, not a
    regular file, over MAX_POLICY_BYTES). Never blocks on a FIFO or a device."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer (this runs in slurmctld).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserInputError(f"policy file {path} does not exist: check the path") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UserInputError(f"policy file {path} cannot be opened ({reason}): check the "
                             "path and its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserInputError(f"policy file {path} is not a regular file: give the path "
                                 "of a TOML file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > MAX_POLICY_BYTES:
                raise UserInputError(f"policy file {path} is larger than "
                                     f"{MAX_POLICY_BYTES // 1024} KiB: it cannot be a policy")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise UserInputError(f"policy file {path} cannot be read "
                             f"({error.strerror or error})") from None
    finally:
        os.close(fd)


def loads(data: bytes | str, source: str = "policy") -> PolicyConfig:
    """Validate policy text (bytes must be UTF-8); see ``load``."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserInputError(
                f"{source}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                f"{error.start}): save the policy as UTF-8") from None
    if len(data) > MAX_POLICY_BYTES:
        raise UserInputError(f"{source}: larger than {MAX_POLICY_BYTES // 1024} KiB: it "
                             "cannot be a policy")
    try:
        raw = tomllib.loads(data)
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"{source}: not valid TOML: {error}") from None
    except RecursionError:
        raise UserInputError(f"{source}: arrays or tables nested too deeply: a policy is "
                             "at most [queues.NAME] deep, with flat lists") from None
    except ValueError:  # an integer literal of more digits than Python converts
        raise UserInputError(f"{source}: a number of thousands of digits; no policy "
                             "setting takes one: shorten it") from None
    return from_dict(raw, source=source)


def from_dict(raw: Any, source: str = "policy") -> PolicyConfig:
    """Validate everything; raise UserInputError listing every problem (and nothing
    else, whatever ``raw`` holds). Types are strict: a string is not a list of its
    characters, ``"false"`` is not a boolean, ``8.0`` is not an integer."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise UserInputError(f"invalid policy ({source}): expected the tables [defaults], "
                             f"[classes.NAME] and [queues.NAME], not {_show(raw)}")
    allowed_top = {"defaults", "classes", "queues"}
    for key in sorted(set(raw) - allowed_top, key=str):
        errors.append(f"unknown section [{_key(key)}]; valid: {', '.join(sorted(allowed_top))}")
    defaults = _table(raw, "defaults", "[defaults]", errors)
    _unknown(defaults, {"gpus_per_node", "nodes", "operators", "unmanaged_accounts"},
             "[defaults]", errors)
    gpus_per_node = _int(defaults, "gpus_per_node", "[defaults]", errors, 1, 1024, 8)
    nodes, node_count = _nodes(defaults, errors)
    operators = _names(defaults, "operators", "[defaults]", errors, ("root", "slurm"),
                       "user names", _USER_RE, example='["root", "slurm"]')
    unmanaged = _choice(defaults, "unmanaged_accounts", "[defaults]", errors,
                        ("reject", "allow"), "reject")

    classes: dict[str, WorkloadClass] = {}
    raw_classes = _table(raw, "classes", "[classes]", errors)
    if not raw_classes and "classes" not in _malformed(errors):
        errors.append("no [classes.<name>] defined: define at least one workload class")
    for name, table in raw_classes.items():
        where = f"[classes.{_key(name)}]"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            errors.append(f"{where}: class names are 1-31 lowercase letters, digits, '-' "
                          "and '_', starting with a letter")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table of settings, not {_show(table)}")
            continue
        _unknown(table, {"priority", "rank", "grace_s", "max_time_min", "default_time_min",
                         "borrow", "signal"}, where, errors)
        classes[name] = WorkloadClass(
            name=name,
            priority=_int(table, "priority", where, errors, 0, 65533, 100),
            rank=_int(table, "rank", where, errors, 1, 50, 1),
            grace_s=_int(table, "grace_s", where, errors, 0, 86400, 60),
            max_time_min=_int(table, "max_time_min", where, errors, 1, 10 ** 7, None),
            default_time_min=_int(table, "default_time_min", where, errors, 1, 10 ** 7, None),
            borrow=_bool(table, "borrow", where, errors, True),
            signal=_choice(table, "signal", where, errors, tuple(WARNING_SIGNALS), "USR2",
                           hint=" (never USR1: NCCL uses it)"),
        )

    queues: dict[str, Queue] = {}
    raw_queues = _table(raw, "queues", "[queues]", errors)
    if not raw_queues and "queues" not in _malformed(errors):
        errors.append("no [queues.<account>] defined: define at least one virtual queue")
    for name, table in raw_queues.items():
        where = f"[queues.{_key(name)}]"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            errors.append(f"{where}: queue (account) names are 1-31 lowercase letters, "
                          "digits, '-' and '_', starting with a letter")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table of settings, not {_show(table)}")
            continue
        _unknown(table, {"guaranteed_gpus", "borrow_limit_gpus", "classes", "users",
                         "default_class"}, where, errors)
        queue_classes = _names(table, "classes", where, errors, tuple(classes), "class names",
                               None, example='["training", "batch"]')
        for cls in queue_classes:
            if cls not in classes:
                errors.append(f"{where} classes: unknown class {_show(cls)}; defined: "
                              f"{', '.join(classes) or 'none'}")
        if "classes" in table and not queue_classes and isinstance(table["classes"], list):
            errors.append(f"{where} classes is empty: list the classes this queue runs")
        users = _names(table, "users", where, errors, (), "user names (or \"*\")", _USER_RE,
                       example='["alice", "bob"] (or ["*"] for everyone)', star=True)
        if not users and ("users" not in table or isinstance(table.get("users"), list)):
            errors.append(f"{where}: users is empty; list who may submit (or [\"*\"])")
        default_class = _choice(table, "default_class", where, errors, queue_classes,
                                queue_classes[0] if queue_classes else "",
                                what="one of its classes")
        queues[name] = Queue(
            name=name,
            guaranteed_gpus=_int(table, "guaranteed_gpus", where, errors, 0, 10 ** 7, 0),
            borrow_limit_gpus=_int(table, "borrow_limit_gpus", where, errors, 0, 10 ** 7, 0),
            classes=queue_classes, users=users, default_class=default_class)
    if errors:
        raise UserInputError(f"invalid policy ({source}):\n  " + "\n  ".join(errors))
    return PolicyConfig(classes, queues, gpus_per_node, nodes, operators, unmanaged, source,
                        node_count)


def _malformed(errors: list[str]) -> set[str]:
    """Sections already reported as malformed (no second, misleading "none defined")."""
    return {section for section in ("classes", "queues")
            if any(error.startswith(f"[{section}]:") for error in errors)}


def _key(key: Any) -> str:
    """A table key as it can be shown: itself when it is a plain name, else escaped."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key):
        return key
    return _show(key)


def _table(raw: dict, key: str, where: str, errors: list[str]) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        expected = "a table of settings" if key == "defaults" else f"[{key}.NAME] tables"
        errors.append(f"{where}: expected {expected}, not {key} = {_show(value)}")
        return {}
    return value


def _unknown(table: dict, valid: set[str], where: str, errors: list[str]) -> None:
    for key in sorted(set(table) - valid, key=str):
        errors.append(f"{where}: unknown key {_show(key)}; valid: {', '.join(sorted(valid))}")


def _int(table: dict, key: str, where: str, errors: list[str], low: int, high: int, default):
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors.append(f"{where} {key} = {_show(value)}: expected an integer in [{low}, {high}]")
        return default
    return value


def _bool(table: dict, key: str, where: str, errors: list[str], default: bool) -> bool:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, bool):
        errors.append(f"{where} {key} = {_show(value)}: expected true or false (TOML "
                      "booleans, without quotes)")
        return default
    return value


def _choice(table: dict, key: str, where: str, errors: list[str], valid: tuple[str, ...],
            default: str, *, hint: str = "", what: str = "") -> str:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str) or value not in valid:
        expected = what or "one of " + ", ".join(f'"{v}"' for v in valid)
        if what and valid:
            expected += " (" + ", ".join(f'"{v}"' for v in valid) + ")"
        errors.append(f"{where} {key} = {_show(value)}: expected {expected} as a "
                      f"string{hint}")
        return default
    return value


def _names(table: dict, key: str, where: str, errors: list[str], default: tuple[str, ...],
           what: str, pattern: re.Pattern | None, *, example: str,
           star: bool = False) -> tuple[str, ...]:
    """A list of names: strictly a TOML array of strings (``users = "bob"`` is an
    error, not ``["b", "o", "b"]``)."""
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, list):
        errors.append(f"{where} {key} = {_show(value)}: expected a list of {what}, e.g. "
                      f"{key} = {example}")
        return ()
    names = []
    for item in value:
        if not isinstance(item, str) or (
                pattern is not None and not pattern.fullmatch(item)
                and not (star and item == "*")):
            errors.append(f"{where} {key}: {_show(item)} is not one of the {what} "
                          f"(e.g. {key} = {example})")
            continue
        names.append(item)
    return tuple(names)


def _nodes(defaults: dict, errors: list[str]) -> tuple[str, int | None]:
    """``[defaults] nodes``: "ALL" or a hostlist, checked so that it cannot end its
    slurm.conf value or line; returns it and its node count (None for ALL)."""
    if "nodes" not in defaults:
        return "ALL", None
    value = defaults["nodes"]
    fix = 'expected a Slurm hostlist such as "c[1-4]" or "ALL"'
    if value == "ALL":
        return "ALL", None
    if not isinstance(value, str) or not _HOSTLIST_CHARS_RE.fullmatch(value):
        errors.append(f"[defaults] nodes = {_show(value)}: {fix} (letters, digits, '.', "
                      "'_', '-', [ranges] and commas only)")
        return "ALL", None
    try:
        names = _hostlist.expand_hostlist(value, allow_duplicates=False)
    except _hostlist.BadHostlist as error:
        errors.append(f"[defaults] nodes = {_show(value)}: {fix} ({error})")
        return "ALL", None
    return value, len(names)
