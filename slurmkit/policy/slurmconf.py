"""What a policy means for Slurm: the slurm.conf fragment and the sacctmgr state.

Pure: ``render_fragment`` returns text; ``sacctmgr_plan`` returns argv lists.
``slurmkit policy install`` writes and runs them.
"""

from __future__ import annotations

from slurmkit.policy.config import PolicyConfig

#: PriorityTier of guaranteed partitions: above every borrowed partition.
GUARANTEED_TIER = 1000
OPERATOR_PARTITION = "main"

JOB_SUBMIT_ENTRY = '''\
"""slurmkit's job-submit policy for job_submit/python (installed by
`slurmkit policy install`; edit {config} instead of this file)."""

from slurmkit.policy.runtime import PolicyRuntime

_runtime = PolicyRuntime({config!r})
job_submit = _runtime.job_submit
job_modify = _runtime.job_modify
files_changed = _runtime.files_changed
'''

SHIM_CONF = """\
# job_submit/python (installed by `slurmkit policy install`).
Policy={policy}
# Where slurmkit is importable from (isolated Python ignores PYTHONPATH).
PythonPath={python_path}
# closed: while the policy cannot run, submissions are refused with the reason;
# open: they pass unchanged. Operators (uid 0) always pass.
FailMode={fail_mode}
# Call count and time, rewritten every 64 calls (must be writable by SlurmUser).
StatsFile={stats_file}
"""


def render_fragment(config: PolicyConfig, *, job_submit_plugins: str = "python") -> str:
    """slurm.conf lines: preemption by partition tier, one guaranteed partition per
    queue, one borrowed partition per class, an operators' default partition."""
    lines = [
        f"# Managed by `slurmkit policy install` from {config.source}; do not edit.",
        "# Guaranteed partitions (never preempted) outrank every borrowed partition; a",
        "# borrowed partition of a higher class rank preempts lower ones (requeue).",
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "# The job's --signal is sent when preemption starts, not only before its limit.",
        "PreemptParameters=send_user_signal",
        "PriorityType=priority/multifactor",
        "PriorityWeightQOS=100000",
        "PriorityWeightAge=1000",
        "PriorityMaxAge=1-0",
    ]
    if job_submit_plugins:
        lines.append(f"JobSubmitPlugins={job_submit_plugins}")
    nodes = config.nodes
    lines.append(f"PartitionName={OPERATOR_PARTITION} Nodes={nodes} Default=YES "
                 "AllowAccounts=root PriorityTier=1 PreemptMode=OFF MaxTime=INFINITE State=UP")
    for queue in config.queues.values():
        lines.append(f"PartitionName={queue.partition} Nodes={nodes} "
                     f"AllowAccounts={queue.name} QOS={queue.quota_qos} "
                     f"PriorityTier={GUARANTEED_TIER} PreemptMode=OFF MaxTime=INFINITE State=UP")
    for job_class in config.classes.values():
        if job_class.borrow:
            lines.append(f"PartitionName={job_class.borrow_partition} Nodes={nodes} "
                         f"PriorityTier={10 * job_class.rank} PreemptMode=REQUEUE "
                         f"GraceTime={job_class.grace_s} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def sacctmgr_plan(config: PolicyConfig, cluster: str) -> list[tuple[str, list[str] | None, list[str]]]:
    """(what, existence query or None, argv) steps that make slurmdbd match the
    policy. An ``add`` step runs only when its query prints nothing; ``modify`` steps
    (query None) always run and are idempotent."""
    steps: list[tuple[str, list[str] | None, list[str]]] = []
    sacctmgr = ["sacctmgr", "--immediate"]
    show = ["sacctmgr", "--noheader", "--parsable2", "show"]
    for job_class in config.classes.values():
        steps.append((f"qos {job_class.qos}",
                      [*show, "qos", "where", f"name={job_class.qos}", "format=name"],
                      [*sacctmgr, "add", "qos", job_class.qos]))
        steps.append((f"qos {job_class.qos} priority", None,
                      [*sacctmgr, "modify", "qos", "where", f"name={job_class.qos}", "set",
                       f"Priority={job_class.priority}",
                       f"Description=slurmkit class {job_class.name}"]))
    for queue in config.queues.values():
        steps.append((f"qos {queue.quota_qos}",
                      [*show, "qos", "where", f"name={queue.quota_qos}", "format=name"],
                      [*sacctmgr, "add", "qos", queue.quota_qos]))
        steps.append((f"qos {queue.quota_qos} quota", None,
                      [*sacctmgr, "modify", "qos", "where", f"name={queue.quota_qos}", "set",
                       f"GrpTRES=gres/gpu={queue.guaranteed_gpus}",
                       f"Description=slurmkit guaranteed quota of {queue.name}"]))
        steps.append((f"account {queue.name}",
                      [*show, "account", "where", f"name={queue.name}", "format=account"],
                      [*sacctmgr, "add", "account", queue.name, f"cluster={cluster}",
                       f"description=slurmkit queue {queue.name}", "organization=slurmkit"]))
        cap = queue.guaranteed_gpus + queue.borrow_limit_gpus
        steps.append((f"account {queue.name} limits", None,
                      [*sacctmgr, "modify", "account", "where", f"name={queue.name}",
                       f"cluster={cluster}", "set", f"GrpTRES=gres/gpu={cap}",
                       f"QOS={','.join(queue.classes)}", f"DefaultQOS={queue.default_class}"]))
        for user in queue.users:
            if user != "*":
                steps.append((f"user {user} in {queue.name}",
                              [*show, "association", "where", f"user={user}",
                               f"account={queue.name}", f"cluster={cluster}", "format=user"],
                              [*sacctmgr, "add", "user", user, f"account={queue.name}",
                               f"cluster={cluster}"]))
    return steps
