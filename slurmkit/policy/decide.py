"""One job description in, one decision out (pure; never raises on any input).

The job description is the dict the C shim builds from Slurm's ``job_desc_msg_t``
(field names as in slurm.h; unset numbers are None) plus ``user``, the submitting
user's name. ``slurmkit policy simulate`` builds the same dict from JSON lines.

A decision accepts the job with changes to apply (``partition``, ``qos``, ``requeue``,
``warn_signal``...) or rejects it with a message telling the user what to change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slurmkit.policy.config import WARNING_SIGNALS, PolicyConfig, Queue, WorkloadClass

#: job_desc fields the policy may set, and their types (the shim checks them again).
SETTABLE_FIELDS = {"partition": str, "qos": str, "account": str, "requeue": int,
                   "warn_signal": int, "warn_time": int, "warn_flags": int,
                   "time_limit": int, "comment": str}

_GPU_RE = re.compile(r"(?:^|,)gres/gpu(?::[^:,=]+)?[:=](\d+)")


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
        return {"action": self.action, "message": self.message, "changes": dict(self.changes),
                "queue": self.queue, "job_class": self.job_class, "gpus": self.gpus,
                "may_borrow": self.may_borrow}


def accept(message: str = "", **details) -> Decision:
    return Decision("accept", message, **details)


def reject(message: str, **details) -> Decision:
    return Decision("reject", message, **details)


def gpus_requested(job: Mapping[str, Any]) -> int:
    """Total GPUs of a job from its TRES requests (per node x nodes, per job, per
    task x tasks; the largest reading wins)."""
    def count(key: str) -> int:
        text = job.get(key) or ""
        return sum(int(number) for number in _GPU_RE.findall(str(text)))

    nodes = _positive(job.get("min_nodes")) or 1
    tasks = _positive(job.get("num_tasks")) or nodes * (_positive(job.get("ntasks_per_node")) or 1)
    return max(count("tres_per_node") * nodes, count("tres_per_job"),
               count("tres_per_task") * tasks)


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
    user_queues = config.queues_of(user)
    if account is None:
        if not user_queues:
            return reject(f"user {user} is not in any queue of this cluster; ask the admins "
                          "to add you to one")
        queue = user_queues[0]
    elif account not in config.queues:
        if config.unmanaged_accounts == "allow":
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

    gpus = gpus_requested(job)
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
    """``scontrol update`` of a job by a user: what the policy controls (partition, QOS,
    account, priority) cannot be changed outside the user's entitlements."""
    try:
        user = str(update.get("user") or "")
        if submit_uid == 0 or user in config.operators:
            return accept()
        if isinstance(update.get("priority"), int) and update["priority"] != 0:
            return reject("only operators may change a job's priority")
        nice = update.get("nice")
        if isinstance(nice, int) and nice < 0:
            return reject("a negative nice raises priority: only operators may use it")
        for key in ("partition", "qos", "account"):
            if _text(update.get(key)) is not None:
                return reject(f"the policy sets {key}; cancel and resubmit with other "
                              "-A/--qos instead of changing it")
        return accept()
    except Exception as error:
        return reject(f"slurmkit policy could not evaluate this update "
                      f"({type(error).__name__}: {error})")


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
