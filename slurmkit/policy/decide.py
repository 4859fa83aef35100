"""One job description in, one decision out (pure; never raises on any input).

The job description is the dict the C shim builds from Slurm's ``job_desc_msg_t``
(field names as in slurm.h; unset numbers are None) plus ``user``, the submitting
user's name. ``slurmkit policy simulate`` builds the same dict from JSON lines.

A decision accepts the job with changes to apply (``partition``, ``qos``, ``requeue``,
``warn_signal``...) or rejects it with a message telling the user what to change.

GPUs are priced as Slurm 24.11 will allocate them, at the worst case the request
allows (``gpus_requested``): a job is refused when its largest possible allocation
exceeds its queue's cap. ``job_modify`` cannot see the job being changed (the shim
gets only the update), so an update that touches a GPU-relevant field is priced with
every field it does not set at its worst (``gpus_after_update``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hostlist as _hostlist

from slurmkit.policy.config import WARNING_SIGNALS, PolicyConfig, Queue, WorkloadClass, _show

#: job_desc fields the policy may set, and their types (the shim checks them again).
SETTABLE_FIELDS = {"partition": str, "qos": str, "account": str, "requeue": int,
                   "warn_signal": int, "warn_time": int, "warn_flags": int,
                   "time_limit": int, "comment": str}

#: slurm.h: "infinite" of a 32-bit field (the shim passes NO_VAL as None, INFINITE as
#: this number); ``scontrol update NumNodes=ALL`` sends it as min_nodes.
INFINITE32 = 0xFFFFFFFF
#: The job_desc fields whose values change how many GPUs Slurm allocates.
GPU_FIELDS = ("tres_per_job", "tres_per_node", "tres_per_socket", "tres_per_task",
              "min_nodes", "max_nodes", "num_tasks", "ntasks_per_node", "ntasks_per_tres",
              "sockets_per_node", "req_nodes")
#: Slurm's count suffixes (suffix_mult in slurm_protocol_defs.c), case-insensitive.
_SUFFIXES = {"": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _SUFFIXES[_letter] = _SUFFIXES[_letter + "ib"] = 1024 ** _power
    _SUFFIXES[_letter + "b"] = 1000 ** _power
_ULLONG_MAX = 2 ** 64 - 1


class GpuRequestError(ValueError):
    """A request the policy cannot price (malformed, negative, or not bounded); the
    message says what to change."""


@dataclass(frozen=True)
class Decision:
    action: str  # "accept" | "reject"
    message: str = ""
    changes: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    job_class: str | None = None
    gpus: int = 0
    may_borrow: bool = False

    def to_dict(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict (which deep-copies): this runs in slurmctld.
        # The message may quote the job's own text: make it encodable (a lone surrogate
        # from undecodable bytes would make the shim's UTF-8 conversion fail, and a
        # failure there falls under the fail mode instead of this decision).
        return {"action": self.action,
                "message": self.message.encode("utf-8", "backslashreplace").decode("utf-8"),
                "changes": dict(self.changes), "queue": self.queue,
                "job_class": self.job_class, "gpus": self.gpus,
                "may_borrow": self.may_borrow}


def accept(message: str = "", **details) -> Decision:
    return Decision("accept", message, **details)


def reject(message: str, **details) -> Decision:
    return Decision("reject", message, **details)


# ------------------------------------------------------------------ pricing GPUs

def _slurm_number(token: str) -> int | None:
    """A count as Slurm's _is_valid_number reads it: digits, then an optional size
    suffix (k, m, g, t, p, with b/ib forms). None when it is not one (Slurm then reads
    the token as a GRES type with an implicit count of 1). The product is exact where
    Slurm's uint64 would wrap: an over-count is a refusal, never a bypass."""
    if not token or not token[0].isascii() or not token[0].isdigit():
        return None
    digits = len(token) - len(token.lstrip("0123456789"))
    value = int(token[:digits])
    if value >= _ULLONG_MAX:  # strtoull saturated: not a number for Slurm
        return None
    multiplier = _SUFFIXES.get(token[digits:].lower())
    return None if multiplier is None else value * multiplier


def gpu_count(text: Any, where: str = "TRES") -> int:
    """GPUs named in one TRES string (``tres_per_node`` etc.), read the way Slurm 24.11
    reads it (slurm_get_next_tres with type "gres", gres.c): every "gres" entry up to
    the next comma; the count after the last '=' or ':' (a non-number after ':' is a
    type with count 1, so ``gres/gpu`` and ``gres/gpu:a100`` are 1 GPU each); entries
    of the GRES named exactly "gpu" are summed. Raises GpuRequestError for what Slurm
    refuses or what has no sensible count (a negative or signed count)."""
    if text is None:
        return 0
    if not isinstance(text, str):
        raise GpuRequestError(f"{where} = {_show(text)} is not a TRES string")
    total, position = 0, 0
    while (found := text.find("gres", position)) >= 0:
        position = found + 4
        if text.startswith("/", position):
            position += 1
        comma = text.find(",", position)
        end = len(text) if comma < 0 else comma
        name = text[position:end]
        position = end + 1 if comma >= 0 else len(text)
        if not name:
            continue
        gres_type = None
        count = 1
        separator = name.rfind("=")
        if separator < 0:
            separator = name.rfind(":")
        if separator >= 0:
            token, equals, name = name[separator + 1:], name[separator] == "=", name[:separator]
            number = _slurm_number(token)
            if token[:1] in ("-", "+"):
                raise GpuRequestError(f"{where} = {_show(text)}: a count must be a whole "
                                      "number of at least 0, without a sign")
            if number is None:
                if equals or not token:
                    raise GpuRequestError(f"{where} = {_show(text)}: {_show(token)} is not "
                                          "a count (e.g. gres/gpu:4)")
                gres_type = token  # "gpu:a100": a type, one of it
            else:
                count = number
        elif _slurm_number(name) is not None:
            continue  # a bare number has no GRES name: Slurm ignores the entry
        colon = name.find(":")
        if colon >= 0:
            if gres_type is not None:
                raise GpuRequestError(f"{where} = {_show(text)}: expected NAME[:TYPE][:COUNT]")
            name = name[:colon]
        if name == "gpu":
            total += count
    return total


def _count_field(job: Mapping[str, Any], key: str) -> int | None:
    value = job.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GpuRequestError(f"{key} = {_show(value)} is not a count (a whole number of at "
                              "least 0)")
    return value


def _hostlist_size(text: Any) -> int:
    if not isinstance(text, str) or len(text) > 65536:
        raise GpuRequestError(f"req_nodes = {_show(text)} is not a node list")
    try:
        return len(_hostlist.expand_hostlist(text, allow_duplicates=False))
    except _hostlist.BadHostlist as error:
        raise GpuRequestError(f"req_nodes = {_show(text)} is not a node list ({error})") \
            from None


def _node_bound(job: Mapping[str, Any], cluster_nodes: int | None) -> int:
    """The most nodes Slurm may give the job: max_nodes when set (``-N 1-40`` is 40);
    without one, an explicit task count (Slurm spreads tasks over more nodes than
    min_nodes when the nodes are too small: at worst one task a node); never more than
    the policy's nodes (when known), never fewer than min_nodes."""
    min_nodes = _count_field(job, "min_nodes")
    max_nodes = _count_field(job, "max_nodes")
    num_tasks = _count_field(job, "num_tasks")

    def everything(value: int) -> int:  # "ALL" (INFINITE): every node the policy has
        return cluster_nodes if value >= INFINITE32 and cluster_nodes else value

    if min_nodes:
        low = everything(min_nodes)
    elif job.get("req_nodes"):  # slurmctld sets min_nodes to the list's size
        low = _hostlist_size(job.get("req_nodes"))
    else:
        low = 1
    if max_nodes:  # 0 is "no maximum", as unset
        high = max(low, everything(max_nodes))
    elif num_tasks:
        high = max(low, num_tasks)
    else:
        high = low
    if cluster_nodes:
        high = max(low, min(high, cluster_nodes))
    return high


def gpus_requested(job: Mapping[str, Any], *, gpus_per_node: int | None = None,
                   cluster_nodes: int | None = None) -> int:
    """The most GPUs Slurm may allocate to this job: the largest of per job, per node x
    nodes, per socket x sockets per node x nodes, per task x tasks, and (with
    ``--ntasks-per-gpu`` and no GPU request) tasks / tasks per GPU, where nodes and
    tasks are their worst case (``_node_bound``). With ``--gpus-per-socket`` and no
    ``--sockets-per-node``, a node is priced at ``gpus_per_node`` (the config's node
    size; Slurm itself refuses that request unless a per-node count is also given).
    Raises GpuRequestError for a request it cannot price."""
    per_job = gpu_count(job.get("tres_per_job"), "tres_per_job")
    per_node = gpu_count(job.get("tres_per_node"), "tres_per_node")
    per_socket = gpu_count(job.get("tres_per_socket"), "tres_per_socket")
    per_task = gpu_count(job.get("tres_per_task"), "tres_per_task")
    num_tasks = _count_field(job, "num_tasks")
    ntasks_per_node = _count_field(job, "ntasks_per_node")
    ntasks_per_tres = _count_field(job, "ntasks_per_tres")
    sockets_per_node = _count_field(job, "sockets_per_node")
    nodes = _node_bound(job, cluster_nodes)
    tasks = num_tasks or nodes * max(ntasks_per_node or 1, ntasks_per_tres or 1)
    readings = [per_job, per_node * nodes, per_task * tasks]
    if per_socket:
        if sockets_per_node:
            readings.append(per_socket * sockets_per_node * nodes)
        elif gpus_per_node:
            readings.append(max(per_socket, gpus_per_node) * nodes)
        else:
            raise GpuRequestError("--gpus-per-socket needs --sockets-per-node")
    if ntasks_per_tres and not (per_job or per_node or per_socket or per_task):
        readings.append(-(-tasks // ntasks_per_tres))  # Slurm derives the GPUs from tasks
    return max(readings)


def gpus_after_update(update: Mapping[str, Any], *, gpus_per_node: int,
                      cluster_nodes: int | None) -> int | None:
    """The most GPUs a job may have after ``scontrol update`` sets the fields in
    ``update``; None when it sets none of GPU_FIELDS. The current job is invisible to
    job_submit plugins, so every factor the update leaves alone is at its worst: the
    job's nodes are all the policy's nodes, a node's GPUs are ``gpus_per_node``, an
    unknown task count is unbounded; and no job holds more than nodes x gpus_per_node.
    Raises GpuRequestError when the worst case is unbounded (the message says which
    field to add to the update)."""
    touched = {key for key in GPU_FIELDS if update.get(key) not in (None, "")}
    if not touched:
        return None
    unbounded = math.inf
    resized = bool(touched & {"min_nodes", "max_nodes", "req_nodes"})
    nodes = _node_bound(update, cluster_nodes) if resized else (cluster_nodes or unbounded)
    readings: list[float] = []
    if "tres_per_job" in touched:
        readings.append(gpu_count(update.get("tres_per_job"), "tres_per_job"))
    if touched & {"tres_per_node", "min_nodes", "max_nodes", "req_nodes"}:
        per_node = (gpu_count(update.get("tres_per_node"), "tres_per_node")
                    if "tres_per_node" in touched else gpus_per_node)
        readings.append(per_node * nodes if per_node else 0)
    if touched & {"tres_per_socket", "sockets_per_node"}:
        per_socket = (gpu_count(update.get("tres_per_socket"), "tres_per_socket")
                      if "tres_per_socket" in touched else gpus_per_node)
        sockets = _count_field(update, "sockets_per_node")
        per_node = per_socket * sockets if sockets else max(per_socket, gpus_per_node)
        readings.append(per_node * nodes if per_node else 0)
    if touched & {"tres_per_task", "num_tasks", "ntasks_per_node", "ntasks_per_tres"}:
        per_task = (gpu_count(update.get("tres_per_task"), "tres_per_task")
                    if "tres_per_task" in touched else gpus_per_node)
        tasks = _count_field(update, "num_tasks") or unbounded
        readings.append(per_task * tasks if per_task else 0)
        if _count_field(update, "ntasks_per_tres"):
            readings.append(tasks)  # GPUs derived from tasks: at most one per task
    worst = min(max(readings, default=0), nodes * gpus_per_node)
    if worst == unbounded:
        raise GpuRequestError("the job's size after this update cannot be bounded (job "
                              "updates do not show the job); give NumNodes= in the same "
                              "update")
    return int(worst)


def decide(config: PolicyConfig, job: Mapping[str, Any], submit_uid: int) -> Decision:
    """The decision for a new job. Total: any input gives a Decision."""
    try:
        return _decide(config, job, submit_uid)
    except Exception as error:  # a bug or an absurd input must not escape to Slurm
        return reject(f"slurmkit policy could not evaluate this job ({type(error).__name__}: "
                      f"{error}); please report it to the cluster admins")


def _decide(config: PolicyConfig, job: Mapping[str, Any], submit_uid: int) -> Decision:
    user = str(job.get("user") or "")
    if submit_uid == 0 or user in config.operators:
        return accept()  # operators place jobs by hand
    if not user:
        return reject("cannot tell who submitted this job (unknown uid); ask the admins")

    account = _text(job.get("account"))
    if account is not None:
        account = account.lower()  # slurmctld lowercases the account after job_submit
    user_queues = config.queues_of(user)
    if account is None:
        if not user_queues:
            return reject(f"user {user} is not in any queue of this cluster; ask the admins "
                          "to add you to one")
        queue = user_queues[0]
    elif account not in config.queues:
        if config.unmanaged_accounts == "allow":
            # Unpoliced, so not on the policy's partitions (borrowed ones are open to
            # every account): otherwise any account would run there without a GPU cap.
            taken = [p for p in _partitions(job.get("partition")) if p in config.partitions]
            if taken:
                return reject(f"partition(s) {', '.join(taken)} belong to the GPU queues; "
                              f"account {account!r} is not a queue (submit with -A QUEUE, "
                              "or to another partition)")
            return accept()
        names = ", ".join(q.name for q in user_queues) or "none"
        return reject(f"account {account!r} is not a queue of this cluster; your queues: "
                      f"{names} (submit with -A QUEUE)")
    else:
        queue = config.queues[account]
    if not queue.admits(user):
        names = ", ".join(q.name for q in user_queues) or "none"
        return reject(f"user {user} may not submit to queue {queue.name}; your queues: "
                      f"{names}", queue=queue.name)

    requested_qos = _text(job.get("qos"))
    class_name = requested_qos or queue.default_class
    if class_name not in config.classes:
        return reject(f"QOS {class_name!r} is not a workload class; use --qos with one of "
                      f"{', '.join(queue.classes)}", queue=queue.name)
    if class_name not in queue.classes:
        return reject(f"queue {queue.name} does not run {class_name} jobs; use --qos with one "
                      f"of {', '.join(queue.classes)}", queue=queue.name)
    job_class = config.classes[class_name]
    details = dict(queue=queue.name, job_class=class_name)

    priority = job.get("priority")
    if isinstance(priority, int) and priority != 0:
        # priority 0 is --hold; any other explicit value is an operator's tool.
        return reject("only operators may set --priority; the workload class sets it "
                      f"(--qos {class_name})", **details)
    nice = job.get("nice")
    if isinstance(nice, int) and nice < 0:
        return reject("a negative --nice raises priority: only operators may use it", **details)

    try:
        gpus = gpus_requested(job, gpus_per_node=config.gpus_per_node,
                              cluster_nodes=config.node_count)
    except GpuRequestError as error:
        return reject(f"cannot count the GPUs this job asks for: {error}", **details)
    details["gpus"] = gpus
    cap = queue.guaranteed_gpus + (queue.borrow_limit_gpus if job_class.borrow else 0)
    if gpus > cap:
        extra = f" + {queue.borrow_limit_gpus} borrowed" if job_class.borrow else ""
        return reject(f"the job asks for {gpus} GPUs; queue {queue.name} may use at most "
                      f"{queue.guaranteed_gpus} guaranteed{extra} for {class_name} jobs",
                      **details)

    allowed = []
    if gpus <= queue.guaranteed_gpus:
        allowed.append(queue.partition)
    may_borrow = job_class.borrow and queue.borrow_limit_gpus > 0
    if may_borrow:
        allowed.append(job_class.borrow_partition)
    requested_partitions = _partitions(job.get("partition"))
    if requested_partitions:
        unknown = [p for p in requested_partitions if p not in allowed]
        if unknown:
            return reject(f"partition(s) {', '.join(unknown)} are not open to {class_name} "
                          f"jobs of queue {queue.name}; allowed: {', '.join(allowed)} "
                          "(or leave -p out: the policy chooses)", **details)
        partitions = requested_partitions
    else:
        partitions = allowed
    details["may_borrow"] = job_class.borrow_partition in partitions

    changes: dict[str, Any] = {"partition": ",".join(partitions), "qos": job_class.qos}
    if account is None:
        changes["account"] = queue.name
    time_limit = job.get("time_limit")
    if isinstance(time_limit, int) and job_class.max_time_min and time_limit > job_class.max_time_min:
        return reject(f"time limit {time_limit} min exceeds the {class_name} class maximum of "
                      f"{job_class.max_time_min} min (-t)", **details)
    if time_limit is None and job_class.default_time_min:
        changes["time_limit"] = job_class.default_time_min
    messages = []
    if details["may_borrow"]:
        # Borrowed capacity is reclaimed by requeueing: the job must be requeueable, and
        # it hears the warning signal when preemption starts (send_user_signal).
        if job.get("requeue") == 0:
            messages.append("--no-requeue ignored: borrowed capacity is reclaimed by requeue")
        changes["requeue"] = 1
        if not job.get("warn_signal"):
            changes["warn_signal"] = WARNING_SIGNALS[job_class.signal]
            changes["warn_time"] = max(job_class.grace_s, 1)
            changes["warn_flags"] = 0  # the job's steps (the trainer), not the batch shell
    return accept("; ".join(messages), changes=changes, **details)


def decide_modify(config: PolicyConfig, update: Mapping[str, Any], submit_uid: int) -> Decision:
    """``scontrol update`` of a job by a user. Total: any input gives a Decision."""
    try:
        return _decide_modify(config, update, submit_uid)
    except Exception as error:  # a bug or an absurd input must not escape to Slurm
        return reject(f"slurmkit policy could not evaluate this update "
                      f"({type(error).__name__}: {error})")


def _decide_modify(config: PolicyConfig, update: Mapping[str, Any],
                   submit_uid: int) -> Decision:
    """What the policy controls (partition, QOS, account, priority) cannot be changed
    outside the user's entitlements, and the GPUs a job may have after the update must
    fit the user's largest queue cap (see ``gpus_after_update``: the job itself is not
    visible here, so fields the update leaves alone are priced at their worst)."""
    user = str(update.get("user") or "")
    if submit_uid == 0 or user in config.operators:
        return accept()
    # 0 is `scontrol hold`, INFINITE `scontrol release`: a user's own hold is theirs.
    if isinstance(update.get("priority"), int) and update["priority"] not in (0, INFINITE32):
        return reject("only operators may change a job's priority")
    nice = update.get("nice")
    if isinstance(nice, int) and nice < 0:
        return reject("a negative nice raises priority: only operators may use it")
    for key in ("partition", "qos", "account"):
        if _text(update.get(key)) is not None:
            return reject(f"the policy sets {key}; cancel and resubmit with other "
                          "-A/--qos instead of changing it")
    try:
        gpus = gpus_after_update(update, gpus_per_node=config.gpus_per_node,
                                 cluster_nodes=config.node_count)
    except GpuRequestError as error:
        return reject(f"cannot count the GPUs after this update: {error}")
    if gpus is None:
        return accept()
    caps = [queue.guaranteed_gpus + max((queue.borrow_limit_gpus
                                         for name in queue.classes
                                         if config.classes[name].borrow), default=0)
            for queue in config.queues_of(user)]
    if not caps:
        if config.unmanaged_accounts == "allow":
            return accept(gpus=gpus)  # the user's jobs are all unmanaged
        return reject(f"user {user} is not in any queue of this cluster: GPU-related "
                      "changes are refused", gpus=gpus)
    if gpus > max(caps):
        return reject(f"after this update the job could use up to {gpus} GPUs; your queues "
                      f"allow at most {max(caps)}. Job updates do not show the job itself, "
                      "so what the update leaves out is priced at its worst: give the "
                      "whole shape in one update (e.g. NumNodes=2 TresPerNode=gres/gpu:8), "
                      "or cancel and resubmit", gpus=gpus)
    return accept(gpus=gpus)


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _partitions(value) -> list[str]:
    text = _text(value)
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def describe(queue: Queue, job_class: WorkloadClass) -> str:
    return f"{queue.name}/{job_class.name}"
