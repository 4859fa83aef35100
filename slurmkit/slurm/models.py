"""Frozen records of what Slurm reports: nodes, partitions, jobs, accounting runs.

Times are UNIX epoch seconds (``*_epoch_s``) or ``None`` where Slurm has no value
(a job that never started); durations carry their unit in the name. Fields keep
Slurm's own vocabulary (state names such as ``NODE_FAIL``) so that records can be
matched against Slurm's documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Node state flags under which no new job can start on the node.
UNUSABLE_NODE_STATES = frozenset({
    "DOWN", "DRAIN", "DRAINING", "DRAINED", "FAIL", "FAILING", "NOT_RESPONDING",
    "MAINTENANCE", "REBOOT_REQUESTED", "REBOOT_ISSUED", "POWERED_DOWN", "POWERING_DOWN",
    "POWERING_UP", "FUTURE", "INVALID_REG", "UNKNOWN", "RESERVED", "PLANNED",
})


#: Every state sacct prints for a run (its first word: "CANCELLED by 2001" is CANCELLED).
JOB_STATES = frozenset({
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REQUEUED",
    "RESIZING", "REVOKED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "COMPLETING",
    "CONFIGURING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
})


def tres_gpus(allocated: dict[str, float]) -> int:
    """GPUs in a TRES map (``slurm.parse.tres``): the generic ``gres/gpu`` count, which
    Slurm lists beside the typed ``gres/gpu:a100`` counts it sums, else the sum of the
    typed ones. A count that is no number of GPUs (inf, nan, 2^31 or more) is 0."""
    count = allocated.get("gres/gpu")
    if count is None:
        count = sum(value for key, value in allocated.items() if key.startswith("gres/gpu:"))
    return int(count) if 0 <= count < 2 ** 31 else 0


@dataclass(frozen=True, slots=True)
class Node:
    """One compute node as slurmctld sees it (``scontrol show nodes --json``)."""

    name: str
    address: str
    states: frozenset[str]
    cpus: int
    alloc_cpus: int
    real_memory_mb: int
    alloc_memory_mb: int
    gpus: int
    gpus_used: int
    partitions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    reason: str = ""
    boot_epoch_s: int | None = None

    @property
    def state(self) -> str:
        """Slurm's compact spelling: base state and flags joined by '+'."""
        return "+".join(sorted(self.states))

    @property
    def is_usable(self) -> bool:
        """True when a new job could start here (not down, drained, failing...)."""
        return not (self.states & UNUSABLE_NODE_STATES)

    @property
    def is_idle(self) -> bool:
        """Usable with nothing allocated: a whole-node job can have it now."""
        return self.is_usable and self.alloc_cpus == 0 and self.gpus_used == 0 \
            and "ALLOCATED" not in self.states and "MIXED" not in self.states


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition (``scontrol show partitions --json``)."""

    name: str
    nodes: tuple[str, ...]
    state: str
    priority_tier: int
    max_time_min: int | None  # None: no limit
    grace_time_s: int
    qos: str = ""
    allow_accounts: tuple[str, ...] = ()
    deny_accounts: tuple[str, ...] = ()
    total_cpus: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    """A job in slurmctld's queue (``squeue --json``), pending or running."""

    job_id: int
    name: str
    user: str
    account: str
    partition: str
    qos: str
    state: str
    state_flags: tuple[str, ...]
    reason: str
    nodes: tuple[str, ...]
    node_count: int
    submit_epoch_s: int | None
    eligible_epoch_s: int | None
    start_epoch_s: int | None
    end_epoch_s: int | None
    time_limit_min: int | None  # None: no limit
    restart_count: int
    requeue: bool
    priority: int
    array_job_id: int | None = None
    array_task_id: int | None = None
    batch_host: str = ""
    tres_per_node: str = ""
    allocated_tres: dict[str, float] = field(default_factory=dict, hash=False)
    stdout_path: str = ""
    working_directory: str = ""
    comment: str = ""
    #: When preemption of this job began (its grace time runs from here); None if never.
    preempt_epoch_s: int | None = None

    @property
    def display_id(self) -> str:
        """``123`` or ``120_3`` for an array task, as Slurm shows it."""
        if self.array_job_id and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of one run (``sacct`` without ``-X``): ``batch``, ``extern``, ``0``..."""

    step_id: str
    name: str
    state: str
    exit_code: int
    exit_signal: int | None
    start_epoch_s: int | None
    end_epoch_s: int | None
    elapsed_s: int
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One run of one job from accounting (``sacct -D``): a requeued job has one
    record per run, ``restarts`` being the run's index (0 for the first run)."""

    job_id: int
    display_id: str
    name: str
    user: str
    account: str
    partition: str
    qos: str
    state: str
    state_flags: tuple[str, ...]
    reason: str
    exit_code: int
    exit_signal: int | None
    restarts: int
    submit_epoch_s: int | None
    eligible_epoch_s: int | None
    start_epoch_s: int | None
    end_epoch_s: int | None
    elapsed_s: int
    nodes: tuple[str, ...]
    node_count: int
    allocated_tres: dict[str, float] = field(default_factory=dict, hash=False)
    array_job_id: int | None = None
    array_task_id: int | None = None
    het_job_id: int | None = None
    het_job_offset: int | None = None
    working_directory: str = ""
    failed_node: str = ""
    steps: tuple[StepRecord, ...] = ()

    @property
    def started(self) -> bool:
        return self.start_epoch_s is not None

    @property
    def gpus(self) -> int:
        return tres_gpus(self.allocated_tres)
