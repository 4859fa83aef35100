"""The pieces of bench/policy.py that need no cluster: the mix of job shapes it
submits, the lines bench/submitter.c reads, and slurmctld's CPU time read from
``/proc`` (parsed here, read in the controller's container).

The instrument is the same for the three plugins (none, job_submit/python,
job_submit/lua): slurmctld's CPU time (utime + stime of the process, every thread,
exited ones included, from ``/proc/<pid>/stat``) before and after N submissions,
divided by N. The kernel keeps utime + stime equal to the process's exact runtime,
truncated to clock ticks (10 ms), so a difference is exact to 2 ticks; the sum of the
live threads' ``schedstat`` run times (ns) is read beside it as a finer cross-check
(it misses threads that exited in between, which are counted).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The fields of a job dict (as the shim builds it: strings or None, numbers or None,
#: nice signed) that bench/submitter.c can set, by kind.
STRING_FIELDS = ("account", "partition", "qos", "tres_per_job", "tres_per_node",
                 "tres_per_socket", "tres_per_task", "req_nodes")
U32_FIELDS = ("min_nodes", "max_nodes", "num_tasks", "time_limit", "priority")
U16_FIELDS = ("ntasks_per_node", "ntasks_per_tres", "sockets_per_node", "requeue",
              "warn_signal", "warn_time", "warn_flags")
SIGNED_FIELDS = ("nice",)
SUBMITTER_FIELDS = STRING_FIELDS + U32_FIELDS + U16_FIELDS + SIGNED_FIELDS
#: The user the bench submits as: a member of both queues of the example policy.
BENCH_USER = "carol"


# ------------------------------------------------------------------ the job mix

def _job(**values: Any) -> dict[str, Any]:
    job: dict[str, Any] = {key: None for key in SUBMITTER_FIELDS}
    job.update(user=BENCH_USER, priority=0)  # held (--hold): never runs
    job.update(values)
    return job


def _gpus_per_node(count: int, nodes: int = 1, **values: Any) -> dict[str, Any]:
    return _job(tres_per_node=f"gres/gpu:{count}", min_nodes=nodes, **values)


#: (weight, what, template). Shapes a user of the example policy submits on the
#: docker-slurm cluster (4 nodes x 8 GPUs, 2 CPUs each), about 86 % accepted; every
#: accepted shape is one Slurm itself accepts there (no more GPUs or tasks than a
#: node has). The refused ones are common mistakes.
_TEMPLATES: list[tuple[int, str, Callable[[random.Random], dict[str, Any]]]] = [
    (24, "1 node x 8 GPUs, default queue and class", lambda r: _gpus_per_node(8)),
    (10, "2 nodes x 8 GPUs, training", lambda r: _gpus_per_node(
        8, 2, max_nodes=2, qos="training", account=r.choice(["team-a", "team-b"]))),
    (6, "-N 1-2 x 8 GPUs", lambda r: _gpus_per_node(8, 1, max_nodes=2)),
    (4, "4 nodes x 8 GPUs (over the guarantee: borrowed only)", lambda r: _gpus_per_node(
        8, 4, qos="training")),
    (10, "--gpus=k inference with a time limit", lambda r: _job(
        tres_per_job=f"gres/gpu:{r.choice([1, 2, 4])}", qos="inference", time_limit=60,
        account="team-a")),
    (5, "-n 4 --gpus-per-task=1, batch", lambda r: _job(
        num_tasks=4, tres_per_task="gres/gpu:1", qos="batch")),
    (5, "-N 2 --ntasks-per-node=2 --gpus-per-task=2", lambda r: _job(
        min_nodes=2, ntasks_per_node=2, tres_per_task="gres/gpu:2", account="team-b")),
    (10, "batch of a few GPUs (default time)", lambda r: _gpus_per_node(
        r.randint(1, 4), qos="batch", account="team-b")),
    (3, "count-less --gres=gpu", lambda r: _job(tres_per_node="gres/gpu", min_nodes=1)),
    (4, "-p guar-team-a (never borrow)", lambda r: _gpus_per_node(
        8, partition="guar-team-a", account="team-a", qos="training", time_limit=600)),
    (3, "-p borrow-training --no-requeue (made requeueable)", lambda r: _gpus_per_node(
        8, 2, max_nodes=2, partition="borrow-training", requeue=0)),
    (2, "-A TEAM-A (account case)", lambda r: _gpus_per_node(4, account="TEAM-A")),
    # refused by the policy
    (3, "inference on team-b (not its class)", lambda r: _gpus_per_node(
        8, account="team-b", qos="inference")),
    (2, "an account that is not a queue", lambda r: _gpus_per_node(2, account="physics")),
    (3, "--gpus=40 (over the cap)", lambda r: _job(tres_per_job="gres/gpu:40")),
    (2, "inference over its time limit", lambda r: _job(
        tres_per_job="gres/gpu:1", qos="inference", time_limit=2000)),
    (2, "-p guar-team-b from team-a", lambda r: _gpus_per_node(
        8, partition="guar-team-b", account="team-a")),
    (1, "-N 1-4 x 16 GPUs", lambda r: _gpus_per_node(16, 1, max_nodes=4)),
    (1, "--gpus-per-socket=8 on 3 nodes x 2 sockets", lambda r: _job(
        tres_per_socket="gres/gpu:8", sockets_per_node=2, min_nodes=3)),
]


def job_mix(count: int, seed: int = 2024) -> list[dict[str, Any]]:
    """``count`` job dicts drawn from the templates by weight, the same list for the
    same (count, seed)."""
    rng = random.Random(seed)
    weights = [weight for weight, _what, _make in _TEMPLATES]
    picks = rng.choices(range(len(_TEMPLATES)), weights=weights, k=count)
    return [_TEMPLATES[index][2](rng) for index in picks]


def resolved(job: Mapping[str, Any], changes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job with the policy's changes applied: what the no-plugin phase submits, so
    that its jobs land in the same partitions and QOS (a refused job goes as it is)."""
    out = dict(job)
    out.update(changes or {})
    return out


def submitter_line(job: Mapping[str, Any]) -> str:
    """One line of bench/submitter.c's input: ``key=value`` fields, tab-separated, the
    fields that are set (None is unset)."""
    fields = []
    for key in SUBMITTER_FIELDS:
        value = job.get(key)
        if value is None:
            continue
        if key in STRING_FIELDS:
            if not isinstance(value, str) or any(c in value for c in "\t\n\r\0"):
                raise ValueError(f"{key} = {value!r} cannot be sent to the submitter")
        else:
            limit = (1 << 16) if key in U16_FIELDS else (1 << 32)
            low = -(1 << 31) if key in SIGNED_FIELDS else 0
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not low <= value < limit:
                raise ValueError(f"{key} = {value!r} is not a {key} the submitter can set")
        fields.append(f"{key}={value}")
    return "\t".join(fields)


@dataclass(frozen=True)
class SubmitterResult:
    count: int
    seconds: float
    accepted: int
    refused: int
    outcomes: str  # one letter a job, in order: A accepted, R refused


def parse_submitter_output(text: str) -> SubmitterResult:
    """bench/submitter.c's stdout: ``N SECONDS ACCEPTED REFUSED`` then the outcomes."""
    lines = text.rstrip("\n").split("\n")
    try:
        (count, seconds, accepted, refused), outcomes = lines[0].split(), lines[1]
        if len(lines) != 2 or outcomes.strip("AR") not in ("", "-"):
            raise ValueError
        result = SubmitterResult(int(count), float(seconds), int(accepted), int(refused),
                                 "" if outcomes == "-" else outcomes)
    except (ValueError, IndexError):
        raise ValueError(f"unexpected submitter output: {text[:200]!r}") from None
    if len(result.outcomes) != result.count or result.accepted + result.refused != result.count \
            or result.outcomes.count("A") != result.accepted:
        raise ValueError(f"inconsistent submitter output: {text[:200]!r}")
    return result


# ------------------------------------------------------------------ slurmctld's CPU time

#: Run in the controller's container (``python3 -c``): slurmctld's pid from its pid
#: file, its stat line, each thread's schedstat, the clock tick and the uptime, as JSON.
SNAPSHOT_SCRIPT = """\
import json, os, sys
pid = int(open(sys.argv[1]).read().split()[0])
base = f"/proc/{pid}"
threads = {}
for tid in os.listdir(base + "/task"):
    try:
        threads[tid] = open(f"{base}/task/{tid}/schedstat").read()
    except OSError:
        pass
print(json.dumps({"pid": pid, "comm": open(base + "/comm").read().strip(),
                  "stat": open(base + "/stat").read(), "threads": threads,
                  "clk_tck": os.sysconf("SC_CLK_TCK"), "uptime": open("/proc/uptime").read()}))
"""


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    utime_ticks: int
    stime_ticks: int
    starttime_ticks: int
    threads: int


def parse_proc_stat(text: str) -> ProcStat:
    """A ``/proc/<pid>/stat`` line (proc(5)): the command is in parentheses and may
    itself contain spaces and parentheses, so the fields are counted from the last
    ')'. utime and stime are fields 14 and 15, num_threads 20, starttime 22."""
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"not a /proc/PID/stat line: {text[:120]!r}")
    rest = text[close_paren + 1:].split()
    if len(rest) < 20:
        raise ValueError(f"short /proc/PID/stat line: {text[:120]!r}")
    try:
        return ProcStat(pid=int(text[:open_paren]), comm=text[open_paren + 1:close_paren],
                        utime_ticks=int(rest[11]), stime_ticks=int(rest[12]),
                        starttime_ticks=int(rest[19]), threads=int(rest[17]))
    except ValueError:
        raise ValueError(f"not a /proc/PID/stat line: {text[:120]!r}") from None


def parse_schedstat(text: str) -> int:
    """``/proc/<pid>/task/<tid>/schedstat``: time on the CPU (ns), wait time (ns),
    timeslices; returns the first."""
    fields = text.split()
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        raise ValueError(f"not a schedstat line: {text[:80]!r}")
    return int(fields[0])


@dataclass(frozen=True)
class CpuSnapshot:
    pid: int
    cpu_ticks: int          # utime + stime, every thread (exited ones included)
    clk_tck: int
    thread_ns: dict[str, int]  # live threads: time on the CPU
    starttime_ticks: int
    uptime_s: float

    @property
    def age_s(self) -> float:
        """How long the process has run (a re-executed slurmctld starts again)."""
        return self.uptime_s - self.starttime_ticks / self.clk_tck


def parse_snapshot(text: str, expect_comm: str = "slurmctld") -> CpuSnapshot:
    """SNAPSHOT_SCRIPT's JSON; ValueError when the pid file named another process."""
    data = json.loads(text)
    stat = parse_proc_stat(data["stat"])
    if data["comm"] != expect_comm or stat.pid != data["pid"]:
        raise ValueError(f"pid {data['pid']} is {data['comm']!r}, not {expect_comm}: a stale "
                         "pid file?")
    return CpuSnapshot(pid=stat.pid, cpu_ticks=stat.utime_ticks + stat.stime_ticks,
                       clk_tck=int(data["clk_tck"]),
                       thread_ns={tid: parse_schedstat(line)
                                  for tid, line in data["threads"].items()},
                       starttime_ticks=stat.starttime_ticks,
                       uptime_s=float(data["uptime"].split()[0]))


@dataclass(frozen=True)
class CpuDelta:
    cpu_us: float           # from utime + stime (exact to 2 ticks)
    threads_cpu_us: float   # from the live threads' schedstat (misses exited threads)
    threads_exited: int
    resolution_us: float    # 2 ticks

    def per_job(self, jobs: int) -> dict[str, float]:
        return {"cpu_us_per_job": self.cpu_us / jobs,
                "threads_cpu_us_per_job": self.threads_cpu_us / jobs,
                "resolution_us_per_job": self.resolution_us / jobs}


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> CpuDelta:
    """slurmctld's CPU time from ``before`` to ``after``; ValueError when they are not
    the same process (slurmctld restarted or re-executed in between)."""
    if before.pid != after.pid or before.starttime_ticks != after.starttime_ticks:
        raise ValueError(f"slurmctld changed between the readings (pid {before.pid} -> "
                         f"{after.pid}): the window is void")
    tick_us = 1e6 / before.clk_tck
    threads_ns = sum(ns - before.thread_ns.get(tid, 0) for tid, ns in after.thread_ns.items())
    return CpuDelta(cpu_us=(after.cpu_ticks - before.cpu_ticks) * tick_us,
                    threads_cpu_us=threads_ns / 1000,
                    threads_exited=len(set(before.thread_ns) - set(after.thread_ns)),
                    resolution_us=2 * tick_us)


# ------------------------------------------------------------------ the summary

PLUGINS = ("none", "python", "lua")


def round_orders(rounds: int) -> list[tuple[str, ...]]:
    """Each round runs the three plugins in a rotated order (a Latin square over three
    rounds), so that drift and position in a round hit each plugin alike."""
    return [PLUGINS[r % 3:] + PLUGINS[:r % 3] for r in range(rounds)]


def summarize(phases: Sequence[Mapping[str, Any]], *, jobs: int, warmup: int,
              rounds: int) -> dict[str, Any]:
    """The final line from per-phase results (each: plugin, cpu_us_per_job,
    threads_cpu_us_per_job, resolution_us_per_job, jobs_per_s, refused,
    idle_cpu_us_per_s): medians
    over rounds per plugin; the added CPU per job and throughput against no plugin."""
    def median(plugin: str, key: str) -> float:
        values = [phase[key] for phase in phases if phase["plugin"] == plugin]
        if not values:
            raise ValueError(f"no {plugin} phase was measured")
        return statistics.median(values)

    summary: dict[str, Any] = {}
    for plugin in ("python", "lua", "none"):
        summary[f"{plugin}_cpu_us_per_job"] = round(median(plugin, "cpu_us_per_job"), 1)
    none_cpu, none_rate = median("none", "cpu_us_per_job"), median("none", "jobs_per_s")
    summary["throughput_ratio_vs_none"] = round(median("python", "jobs_per_s") / none_rate, 3)
    summary["lua_throughput_ratio_vs_none"] = round(median("lua", "jobs_per_s") / none_rate, 3)
    for plugin in PLUGINS:
        summary[f"{plugin}_jobs_per_s"] = round(median(plugin, "jobs_per_s"), 1)
    python_added = median("python", "cpu_us_per_job") - none_cpu
    lua_added = median("lua", "cpu_us_per_job") - none_cpu
    summary["python_added_cpu_us_per_job"] = round(python_added, 1)
    summary["lua_added_cpu_us_per_job"] = round(lua_added, 1)
    for plugin in PLUGINS:  # the cross-check instrument, same windows
        summary[f"{plugin}_threads_cpu_us_per_job"] = round(
            median(plugin, "threads_cpu_us_per_job"), 1)
    summary["idle_cpu_us_per_s"] = round(statistics.median(
        phase["idle_cpu_us_per_s"] for phase in phases), 1)
    summary["resolution_us_per_job"] = round(max(
        phase["resolution_us_per_job"] for phase in phases), 1)
    for plugin in PLUGINS:
        summary[f"{plugin}_refused"] = int(median(plugin, "refused"))
    summary.update(jobs_per_round=jobs, warmup_jobs=warmup, rounds=rounds)
    summary["meets_targets"] = (python_added <= lua_added
                                and summary["throughput_ratio_vs_none"] >= 0.9)
    return summary
