"""What a policy means for Slurm: the slurm.conf fragment and the sacctmgr state.

Pure: ``render_fragment`` returns text; ``sacctmgr_plan`` returns argv lists.
``slurmkit policy install`` writes and runs them.
"""

from __future__ import annotations

import re

from slurmkit.errors import UserInputError
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


#: A value slurm.conf reads as one token of one line: no space or '#' (they end the
#: value), no quote, no control character (a newline would start a new line, e.g.
#: ``PrologSlurmctld=...``).
_CONF_VALUE_RE = re.compile(r"[A-Za-z0-9._\[\],:/-]{1,8192}")


def conf_value(value: object, what: str) -> str:
    """``value`` as text for a ``Key=Value`` of slurm.conf; UserInputError if it could
    end its token or its line. The configuration loader validates the same values:
    this is the check at the boundary, for a PolicyConfig built any other way."""
    text = str(value)
    if not _CONF_VALUE_RE.fullmatch(text):
        raise UserInputError(f"refusing to write {what}={text!r} into slurm.conf: only "
                             "letters, digits and . _ [ ] , : / - may appear in a value")
    return text


def comment_text(text: str) -> str:
    """``text`` for a ``#`` comment line: non-printable characters escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def render_shim_conf(*, policy: object, fail_mode: str, python_path: object,
                     stats_file: object) -> str:
    """job_submit_python.conf. The shim reads ``Key=Value`` lines and trims trailing
    blanks: a value with a control character (a newline would add a line, e.g. a
    second ``FailMode=``) or surrounding blanks is refused (UserInputError)."""
    if fail_mode not in ("closed", "open"):
        raise UserInputError(f"FailMode {fail_mode!r}: expected closed or open")
    values = {}
    for key, value in (("Policy", policy), ("PythonPath", python_path),
                       ("StatsFile", stats_file)):
        text = str(value)
        if (not text or text != text.strip()
                or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)):
            raise UserInputError(f"refusing to write {key}={text!r} into "
                                 "job_submit_python.conf: paths there must not contain "
                                 "control characters or start or end with blanks")
        values[key] = text
    return SHIM_CONF.format(policy=values["Policy"], fail_mode=fail_mode,
                            python_path=values["PythonPath"], stats_file=values["StatsFile"])


def render_entry_module(config_path: object) -> str:
    """job_submit.py: the path is a Python string literal (``repr``), whatever it holds."""
    return JOB_SUBMIT_ENTRY.format(config=str(config_path))


def render_fragment(config: PolicyConfig, *, job_submit_plugins: str = "python") -> str:
    """slurm.conf lines: preemption by partition tier, one guaranteed partition per
    queue, one borrowed partition per class, an operators' default partition. Every
    interpolated value is checked by ``conf_value`` (UserInputError otherwise)."""
    lines = [
        (f"# Managed by `slurmkit policy install` from {comment_text(config.source)}; "
         "do not edit."),
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
        lines.append(f"JobSubmitPlugins={conf_value(job_submit_plugins, 'JobSubmitPlugins')}")
    nodes = conf_value(config.nodes, "Nodes")
    lines.append(f"PartitionName={OPERATOR_PARTITION} Nodes={nodes} Default=YES "
                 "AllowAccounts=root PriorityTier=1 PreemptMode=OFF MaxTime=INFINITE State=UP")
    for queue in config.queues.values():
        lines.append(f"PartitionName={conf_value(queue.partition, 'PartitionName')} "
                     f"Nodes={nodes} AllowAccounts={conf_value(queue.name, 'AllowAccounts')} "
                     f"QOS={conf_value(queue.quota_qos, 'QOS')} "
                     f"PriorityTier={GUARANTEED_TIER} PreemptMode=OFF MaxTime=INFINITE State=UP")
    for job_class in config.classes.values():
        if job_class.borrow:
            lines.append(
                f"PartitionName={conf_value(job_class.borrow_partition, 'PartitionName')} "
                f"Nodes={nodes} PriorityTier={conf_value(10 * job_class.rank, 'PriorityTier')} "
                f"PreemptMode=REQUEUE GraceTime={conf_value(job_class.grace_s, 'GraceTime')} "
                "MaxTime=INFINITE State=UP")
    text = "\n".join(lines) + "\n"
    # Belt and braces: one line per entry above, whatever the values were.
    if text.count("\n") != len(lines) or any(ch in text for ch in "\r\0\x0b\x0c"):
        raise UserInputError("refusing to write a slurm.conf fragment with an extra line "
                             "break; check the policy's names")
    return text


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
