"""Cost of the job-submit policy inside slurmctld: job_submit/python (slurmkit's
policy) against no plugin and against the same policy in job_submit/lua, on the
docker-slurm cluster, in one run.

For each plugin the same partitions and QOS are installed (`slurmkit policy install`,
with or without the plugin); a libslurm client (bench/submitter.c, on the login node)
submits held jobs back to back. Measured:
- throughput: jobs accepted per second by one client;
- per-call cost: for Python, the shim's own timer (wall time per call inside
  slurmctld, under the submission load); for Lua, which has no timer, slurmctld's
  mean REQUEST_SUBMIT_BATCH_JOB time (sdiag) minus the no-plugin mean (the same delta
  is reported for Python: on this 2-core machine it is within noise). Also the shim
  driven alone by job_submit/harness.c (no load): the cost of the call itself.
Rounds are interleaved (none, python, lua, none, ...) so drift hits all three.

Target (issue 4): python throughput >= 0.9 x no plugin.
Final line: {"python_us_per_call", "lua_us_per_call", "throughput_ratio_vs_none", ...}
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmkit.policy import config as config_module  # noqa: E402
from slurmkit.policy.lua import render_lua  # noqa: E402
from slurmkit.testing.cluster import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "policy" / "policy.toml"
JOBS = int(os.environ.get("BENCH_JOBS", "320"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STATS_FILE = "/var/lib/slurm/slurmctld/job_submit_python.stats"  # StateSaveLocation


def log(text: str) -> None:
    print(f"[bench/policy] {text}", file=sys.stderr, flush=True)


def configure(cluster: Cluster, plugin: str) -> None:
    policy = "/opt/slurmkit/examples/policy/policy.toml"
    if plugin == "python":
        cluster.exec("ctl", ["slurmkit", "policy", "install", policy])
        return
    cluster.exec("ctl", ["slurmkit", "policy", "install", policy, "--no-job-submit",
                         "--no-reconfigure"])
    if plugin == "lua":
        lua = render_lua(config_module.load(POLICY))
        cluster.exec("ctl", ["tee", "/etc/slurm/job_submit.lua"], input_text=lua)
        cluster.exec("ctl", ["bash", "-c", "echo JobSubmitPlugins=lua >> /etc/slurm/policy.conf"])
    cluster.reconfigure()


def submit_rpc_mean_us(cluster: Cluster) -> float:
    stats = json.loads(cluster.exec("ctl", ["sdiag", "--json"]).stdout)["statistics"]
    for rpc in stats["rpcs_by_message_type"]:
        if rpc["message_type"] == "REQUEST_SUBMIT_BATCH_JOB":
            return rpc["total_time"] / max(rpc["count"], 1)
    raise RuntimeError("sdiag shows no REQUEST_SUBMIT_BATCH_JOB")


def shim_stats(cluster: Cluster) -> tuple[int, int]:
    result = cluster.exec("ctl", ["cat", STATS_FILE], check=False)
    fields = dict(part.split("=") for part in result.stdout.split()) if result.stdout else {}
    return int(fields.get("calls", 0)), int(fields.get("total_ns", 0))


def run_phase(cluster: Cluster, plugin: str) -> dict:
    configure(cluster, plugin)
    cluster.cancel_test_jobs()
    # Warm-up (the first call imports the policy; caches fill), then reset the stats.
    # 128 calls: the shim rewrites its stats file every 64 calls.
    cluster.exec("ctl", ["rm", "-f", STATS_FILE])
    explicit = ["guar-team-a,borrow-training", "training"] if plugin == "none" else []
    cluster.exec("login", ["/tmp/submitter", "128", *explicit], user="alice")
    cluster.exec("ctl", ["sdiag", "--reset"])
    calls_before, ns_before = shim_stats(cluster)
    output = cluster.exec("login", ["/tmp/submitter", str(JOBS), *explicit], user="alice",
                          timeout_s=600).stdout.split()
    count, seconds, failures = int(output[0]), float(output[1]), int(output[2])
    assert failures == 0, f"{plugin}: {failures} submissions failed"
    calls_after, ns_after = shim_stats(cluster)
    result = {"plugin": plugin, "jobs_per_s": count / seconds,
              "submit_rpc_us": submit_rpc_mean_us(cluster)}
    if plugin == "python" and calls_after > calls_before:
        # The stats file is written every 64 calls: use the calls it covers.
        result["shim_us_per_call"] = (ns_after - ns_before) / (calls_after - calls_before) / 1000
    cluster.cancel_test_jobs()
    log(json.dumps(result))
    return result


def isolated_call_us(cluster: Cluster) -> float:
    """The shim alone: job_submit/harness.c loads the installed plugin and calls it
    5000 times in a row, with the policy installed (median of 3 runs)."""
    configure(cluster, "python")
    cluster.exec("ctl", ["bash", "-c", "rm -rf /tmp/shim-harness && cp -r "
                         "/usr/local/src/slurmkit/job_submit /tmp/shim-harness 2>/dev/null || "
                         "cp -r /opt/slurmkit/job_submit /tmp/shim-harness; "
                         "make -s -C /tmp/shim-harness harness && chown -R slurm /tmp/shim-harness"])
    times = []
    for _ in range(3):
        output = cluster.exec("ctl", ["runuser", "-u", "slurm", "--", "/tmp/shim-harness/harness",
                                      "/usr/lib/x86_64-linux-gnu/slurm-wlm/job_submit_python.so",
                                      "5000"]).stdout
        times.append(float(output.split("us_per_call=")[1].split()[0]))
    return round(statistics.median(times), 1)


def main() -> None:
    cluster = Cluster()
    cluster.up()
    cluster.exec("login", ["gcc", "-O2", "-Wall", "-o", "/tmp/submitter",
                           "/opt/slurmkit/bench/submitter.c", "-lslurm"])
    results: dict[str, list[dict]] = {"none": [], "python": [], "lua": []}
    isolated_us = None
    try:
        isolated_us = isolated_call_us(cluster)
        for _round in range(ROUNDS):
            for plugin in ("none", "python", "lua"):
                results[plugin].append(run_phase(cluster, plugin))
    finally:
        cluster.cancel_test_jobs()
        cluster.exec("ctl", ["rm", "-f", "/etc/slurm/job_submit.lua"], check=False)
        cluster.exec("ctl", ["slurmkit", "policy", "uninstall"])

    def median(plugin: str, key: str) -> float:
        return statistics.median(r[key] for r in results[plugin])

    none_rpc = median("none", "submit_rpc_us")
    summary = {
        "python_us_per_call": round(statistics.median(
            r["shim_us_per_call"] for r in results["python"] if "shim_us_per_call" in r), 1),
        "lua_us_per_call": round(median("lua", "submit_rpc_us") - none_rpc, 1),
        "throughput_ratio_vs_none": round(median("python", "jobs_per_s")
                                          / median("none", "jobs_per_s"), 3),
        "lua_throughput_ratio_vs_none": round(median("lua", "jobs_per_s")
                                              / median("none", "jobs_per_s"), 3),
        "python_sdiag_delta_us": round(median("python", "submit_rpc_us") - none_rpc, 1),
        "python_isolated_us_per_call": isolated_us,
        "none_jobs_per_s": round(median("none", "jobs_per_s"), 1),
        "python_jobs_per_s": round(median("python", "jobs_per_s"), 1),
        "lua_jobs_per_s": round(median("lua", "jobs_per_s"), 1),
        "none_submit_rpc_us": round(none_rpc, 1),
        "jobs_per_round": JOBS, "rounds": ROUNDS,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
