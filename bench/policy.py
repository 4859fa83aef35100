"""What the job-submit policy costs slurmctld: no plugin, job_submit/python
(slurmkit's policy) and job_submit/lua running the same checks
(slurmkit/policy/lua.py), measured the same way, on the docker-slurm cluster (needs
it; `make bench` brings it up).

One instrument for all three: slurmctld's CPU time (utime + stime of the process,
every thread, from /proc/<pid>/stat in the controller's container) before and after
a libslurm client (bench/submitter.c, on the login node) submits N held jobs back
to back, divided by N; and the client's throughput (submissions answered a second).
The jobs are a deterministic mix of shapes (slurmkit/testing/policy_bench.py: GPU
requests per node, job, task and socket, node ranges, accounts and QOS, about 15 %
refused by the policy), the same list for the three plugins; with no plugin the jobs
carry the policy's choices (partitions, QOS, account, time) themselves, so that
slurmctld places them alike. The outcome of every job (accepted or refused) is
checked against `decide`, and the Python and Lua policies must agree on every job.

Each phase: install the plugin (policy.conf, `scontrol reconfigure`: a fresh
slurmctld), wait until the previous phase's jobs are purged (MinJobAge=10 during the
bench), submit a warm-up batch (imports, caches), wait until slurmctld is idle,
then the measured batch; its jobs are cancelled afterwards. Rounds rotate the order
of the plugins (none/python/lua, python/lua/none, lua/none/python); medians over
rounds. The live threads' schedstat times are read beside utime + stime as a finer
cross-check (`*_threads_cpu_us_per_job`).

Targets (issue 12): the Python policy's added CPU per job <= the Lua policy's;
throughput >= 0.9 x no plugin.

    .venv/bin/python bench/policy.py   # ~3 min on 2 cores (9 phases of ~20 s)

Environment: BENCH_JOBS (measured submissions per phase, default 1000),
BENCH_ROUNDS (default 3), BENCH_WARMUP (default 50), BENCH_SEED (the job mix).
Final line: {"python_cpu_us_per_job", "lua_cpu_us_per_job", "none_cpu_us_per_job",
"throughput_ratio_vs_none", "python_added_cpu_us_per_job", ...}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmkit.errors import ClusterHarnessError  # noqa: E402
from slurmkit.policy import config as config_module  # noqa: E402
from slurmkit.policy.decide import decide  # noqa: E402
from slurmkit.policy.lua import render_lua  # noqa: E402
from slurmkit.testing.cluster import Cluster, exclusive_use, wait_until  # noqa: E402
from slurmkit.testing.policy_bench import (  # noqa: E402
    BENCH_USER,
    SNAPSHOT_SCRIPT,
    CpuSnapshot,
    cpu_between,
    job_mix,
    parse_snapshot,
    parse_submitter_output,
    resolved,
    round_orders,
    submitter_line,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "policy" / "policy.toml"
POLICY_IN_CTL = "/opt/slurmkit/examples/policy/policy.toml"
SUBMITTER_SOURCE = "/opt/slurmkit/bench/submitter.c"
SUBMITTER = "/tmp/bench-policy-submitter"
PID_FILE = "/run/slurmctld.pid"  # SlurmctldPidFile in docker-slurm/etc/slurm.conf
POLICY_CONF = "/etc/slurm/policy.conf"
LUA_SCRIPT = "/etc/slurm/job_submit.lua"
JOBS = int(os.environ.get("BENCH_JOBS", "1000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "50"))
SEED = int(os.environ.get("BENCH_SEED", "2024"))
#: During the bench only: finished jobs leave slurmctld after 10 s (purged every
#: max(10, MinJobAge) s), so each phase starts with no job records of the last one.
BENCH_SETTINGS = "# bench/policy.py (removed by `slurmkit policy uninstall`)\nMinJobAge=10\n"
SUBMIT_UID = 2003  # any user's uid: `decide` only tells 0 (root) apart


def log(text: str) -> None:
    print(f"[bench/policy] {text}", file=sys.stderr, flush=True)


def plugin_confs(installed: str) -> dict[str, str]:
    """policy.conf for each plugin, from the one `slurmkit policy install` wrote."""
    lines = installed.splitlines()
    plugin_lines = [i for i, line in enumerate(lines) if line.startswith("JobSubmitPlugins=")]
    if len(plugin_lines) != 1 or lines[plugin_lines[0]] != "JobSubmitPlugins=python":
        raise ClusterHarnessError(f"{POLICY_CONF} does not set JobSubmitPlugins=python once; "
                                  "did `slurmkit policy install` change?")
    confs = {}
    for plugin in ("none", "python", "lua"):
        text = list(lines)
        if plugin == "none":
            del text[plugin_lines[0]]
        else:
            text[plugin_lines[0]] = f"JobSubmitPlugins={plugin}"
        confs[plugin] = "\n".join(text) + "\n" + BENCH_SETTINGS
    return confs


def snapshot(cluster: Cluster) -> CpuSnapshot:
    return parse_snapshot(cluster.exec("ctl", ["python3", "-c", SNAPSHOT_SCRIPT,
                                               PID_FILE]).stdout)


def dbd_queue(cluster: Cluster) -> int:
    stats = json.loads(cluster.exec("ctl", ["sdiag", "--json"]).stdout)["statistics"]
    return int(stats.get("dbd_agent_queue_size", 0))


def settle(cluster: Cluster, timeout_s: float = 30) -> float:
    """Wait until slurmctld is idle (no accounting messages queued, at most 2 clock
    ticks of CPU in a second); returns its idle CPU rate (µs/s)."""
    last = [snapshot(cluster), time.monotonic()]
    rate = [0.0]

    def idle() -> bool:
        now, now_s = snapshot(cluster), time.monotonic()
        if now_s - last[1] < 1.0:
            return False
        delta = cpu_between(last[0], now)
        rate[0] = delta.cpu_us / (now_s - last[1])
        last[:] = [now, now_s]
        return delta.cpu_us <= delta.resolution_us and dbd_queue(cluster) == 0

    try:
        wait_until("slurmctld to be idle", idle, timeout_s=timeout_s, interval_s=0.25)
    except ClusterHarnessError:
        log(f"slurmctld not idle after {timeout_s:.0f} s ({rate[0]:.0f} µs/s); measuring anyway")
    return rate[0]


def submit(cluster: Cluster, lines: list[str]):
    output = cluster.exec("login", [SUBMITTER], user=BENCH_USER, timeout_s=600,
                          input_text="".join(line + "\n" for line in lines))
    return parse_submitter_output(output.stdout)


def run_phase(cluster: Cluster, plugin: str, conf: str, lines: list[str],
              round_index: int) -> dict:
    cluster.cancel_test_jobs()
    cluster.exec("ctl", ["tee", POLICY_CONF], input_text=conf)
    cluster.reconfigure()
    running = cluster.slurm_config().get("JobSubmitPlugins", "")
    if running != {"none": "(null)"}.get(plugin, plugin):
        raise ClusterHarnessError(f"slurmctld runs JobSubmitPlugins={running}, not {plugin}")
    wait_until("the previous phase's jobs to be purged",
               lambda: not cluster.exec("ctl", ["squeue", "--noheader", "--states=all",
                                                "--format=%i", f"--user={BENCH_USER}"]
                                        ).stdout.strip(), timeout_s=120)
    submit(cluster, lines[:WARMUP])
    idle_rate = settle(cluster)
    started = time.monotonic()
    before = snapshot(cluster)
    result = submit(cluster, lines[WARMUP:])
    after = snapshot(cluster)
    window_s = time.monotonic() - started
    delta = cpu_between(before, after)
    phase = {"plugin": plugin, "round": round_index,
             **{key: round(value, 2) for key, value in delta.per_job(result.count).items()},
             "threads_exited": delta.threads_exited,
             "jobs_per_s": round(result.count / result.seconds, 1),
             "accepted": result.accepted, "refused": result.refused,
             "idle_cpu_us_per_s": round(idle_rate), "window_s": round(window_s, 2),
             "slurmctld_age_s": round(after.age_s, 1)}
    log(json.dumps(phase))
    phase["outcomes"] = result.outcomes
    return phase


def check_outcomes(phases: list[dict], expected: str, mix: list[dict]) -> bool:
    """The Python and Lua policies must have made the same decision on every job
    (False when they did not); jobs that Slurm refused against `decide` are logged."""
    agree = True
    for round_index in sorted({phase["round"] for phase in phases}):
        by_plugin = {p["plugin"]: p["outcomes"] for p in phases if p["round"] == round_index}
        python, lua = by_plugin.get("python"), by_plugin.get("lua")
        if python is not None and lua is not None and python != lua:
            agree = False
            differ = [i for i, (a, b) in enumerate(zip(python, lua, strict=True)) if a != b]
            log(f"round {round_index}: python and lua decided {len(differ)} jobs differently, "
                f"e.g. {[submitter_line(mix[WARMUP + i]) for i in differ[:3]]}")
    for phase in phases:
        if phase["plugin"] != "none" and phase["outcomes"] != expected:
            wrong = [i for i, (a, b) in enumerate(zip(phase["outcomes"], expected, strict=True))
                     if a != b]
            log(f"{phase['plugin']} round {phase['round']}: {len(wrong)} outcomes differ from "
                f"decide() (A/R), e.g. {[submitter_line(mix[WARMUP + i]) for i in wrong[:3]]}")
    return agree


def main() -> int:
    config = config_module.load(POLICY)
    mix = job_mix(WARMUP + JOBS, SEED)
    decisions = [decide(config, job, SUBMIT_UID) for job in mix]
    expected = "".join("A" if d.action == "accept" else "R" for d in decisions)[WARMUP:]
    policed = [submitter_line(job) for job in mix]
    inputs = {"python": policed, "lua": policed,
              "none": [submitter_line(resolved(job, d.changes if d.action == "accept"
                                                else None))
                       for job, d in zip(mix, decisions, strict=True)]}
    cluster = Cluster()
    phases: list[dict] = []
    with exclusive_use("bench/policy.py"):
        cluster.up()
        cluster.exec("login", ["gcc", "-O2", "-Wall", "-o", SUBMITTER,
                               SUBMITTER_SOURCE, "-lslurm"])
        try:
            cluster.exec("ctl", ["slurmkit", "policy", "install", POLICY_IN_CTL])
            confs = plugin_confs(cluster.exec("ctl", ["cat", POLICY_CONF]).stdout)
            cluster.exec("ctl", ["tee", LUA_SCRIPT], input_text=render_lua(config))
            for round_index, order in enumerate(round_orders(ROUNDS)):
                for plugin in order:
                    phases.append(run_phase(cluster, plugin, confs[plugin], inputs[plugin],
                                            round_index))
        finally:
            cluster.cancel_test_jobs()
            cluster.exec("ctl", ["rm", "-f", LUA_SCRIPT], check=False)
            cluster.exec("ctl", ["slurmkit", "policy", "uninstall"])
    agree = check_outcomes(phases, expected, mix)
    summary = summarize(phases, jobs=JOBS, warmup=WARMUP, rounds=ROUNDS)
    summary["refused_by_policy"] = expected.count("R")
    summary["python_lua_agree"] = agree
    summary["outcomes_as_decided"] = all(p["outcomes"] == expected for p in phases
                                         if p["plugin"] != "none")
    summary["threads_exited_max"] = max(p["threads_exited"] for p in phases)
    print(json.dumps(summary))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
