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

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmkit.errors import UserInputError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$|^\*$")
WARNING_SIGNALS = {"USR2": 12, "TERM": 15, "URG": 23, "INT": 2, "HUP": 1}


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

    def queues_of(self, user: str) -> list[Queue]:
        return [queue for queue in self.queues.values() if queue.admits(user)]

    @property
    def partitions(self) -> list[str]:
        return [queue.partition for queue in self.queues.values()] + \
            [cls.borrow_partition for cls in self.classes.values() if cls.borrow]


def load(path: str | Path) -> PolicyConfig:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise UserInputError(f"policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"{path}: not valid TOML: {error}") from None
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], source: str = "policy") -> PolicyConfig:
    """Validate everything; raise UserInputError listing every problem."""
    errors: list[str] = []
    allowed_top = {"defaults", "classes", "queues"}
    for key in sorted(set(raw) - allowed_top):
        errors.append(f"unknown section [{key}]; valid: {', '.join(sorted(allowed_top))}")
    defaults = raw.get("defaults", {})
    _unknown(defaults, {"gpus_per_node", "nodes", "operators", "unmanaged_accounts"},
             "[defaults]", errors)
    gpus_per_node = _int(defaults, "gpus_per_node", "[defaults]", errors, 1, 1024, 8)
    nodes = defaults.get("nodes", "ALL")
    if not isinstance(nodes, str) or not nodes:
        errors.append("[defaults] nodes: expected a hostlist such as \"c[1-4]\" or \"ALL\"")
        nodes = "ALL"
    operators = tuple(defaults.get("operators", ("root", "slurm")))
    unmanaged = defaults.get("unmanaged_accounts", "reject")
    if unmanaged not in ("reject", "allow"):
        errors.append("[defaults] unmanaged_accounts: expected \"reject\" or \"allow\"")

    classes: dict[str, WorkloadClass] = {}
    raw_classes = raw.get("classes", {})
    if not raw_classes:
        errors.append("no [classes.<name>] defined: define at least one workload class")
    for name, table in raw_classes.items():
        where = f"[classes.{name}]"
        if not _NAME_RE.match(name):
            errors.append(f"{where}: class names are lowercase letters, digits, '-' and '_'")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table")
            continue
        _unknown(table, {"priority", "rank", "grace_s", "max_time_min", "default_time_min",
                         "borrow", "signal"}, where, errors)
        signal = table.get("signal", "USR2")
        if signal not in WARNING_SIGNALS:
            errors.append(f"{where} signal = {signal!r}: expected one of "
                          f"{', '.join(WARNING_SIGNALS)} (never USR1: NCCL uses it)")
        classes[name] = WorkloadClass(
            name=name,
            priority=_int(table, "priority", where, errors, 0, 65533, 100),
            rank=_int(table, "rank", where, errors, 1, 50, 1),
            grace_s=_int(table, "grace_s", where, errors, 0, 86400, 60),
            max_time_min=_int(table, "max_time_min", where, errors, 1, 10 ** 7, None),
            default_time_min=_int(table, "default_time_min", where, errors, 1, 10 ** 7, None),
            borrow=bool(table.get("borrow", True)),
            signal=signal if signal in WARNING_SIGNALS else "USR2",
        )

    queues: dict[str, Queue] = {}
    raw_queues = raw.get("queues", {})
    if not raw_queues:
        errors.append("no [queues.<account>] defined: define at least one virtual queue")
    for name, table in raw_queues.items():
        where = f"[queues.{name}]"
        if not _NAME_RE.match(name):
            errors.append(f"{where}: queue (account) names are lowercase letters, digits, "
                          "'-' and '_'")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table")
            continue
        _unknown(table, {"guaranteed_gpus", "borrow_limit_gpus", "classes", "users",
                         "default_class"}, where, errors)
        queue_classes = tuple(table.get("classes", tuple(classes)))
        for cls in queue_classes:
            if cls not in classes:
                errors.append(f"{where} classes: unknown class {cls!r}; defined: "
                              f"{', '.join(classes) or 'none'}")
        users = tuple(table.get("users", ()))
        for user in users:
            if not isinstance(user, str) or not _USER_RE.match(user):
                errors.append(f"{where} users: {user!r} is not a user name (or \"*\")")
        if not users:
            errors.append(f"{where}: users is empty; list who may submit (or [\"*\"])")
        default_class = table.get("default_class", queue_classes[0] if queue_classes else "")
        if default_class not in queue_classes:
            errors.append(f"{where} default_class {default_class!r} is not one of its classes")
        queues[name] = Queue(
            name=name,
            guaranteed_gpus=_int(table, "guaranteed_gpus", where, errors, 0, 10 ** 7, 0),
            borrow_limit_gpus=_int(table, "borrow_limit_gpus", where, errors, 0, 10 ** 7, 0),
            classes=queue_classes, users=users, default_class=default_class)
    if errors:
        raise UserInputError(f"invalid policy ({source}):\n  " + "\n  ".join(errors))
    return PolicyConfig(classes, queues, gpus_per_node, nodes, operators, unmanaged, source)


def _unknown(table: dict, valid: set[str], where: str, errors: list[str]) -> None:
    for key in sorted(set(table) - valid):
        errors.append(f"{where}: unknown key {key!r}; valid: {', '.join(sorted(valid))}")


def _int(table: dict, key: str, where: str, errors: list[str], low: int, high: int, default):
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors.append(f"{where} {key} = {value!r}: expected an integer in [{low}, {high}]")
        return default
    return value
