"""What bench/policy.py relies on, without a cluster: slurmctld's CPU time read from
/proc lines captured in the docker-slurm controller, the job mix and the lines
bench/submitter.c reads (the submitter itself built against stub Slurm headers), and
the summary."""

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from slurmkit.policy import config as config_module
from slurmkit.policy.decide import decide, gpu_count
from slurmkit.testing import policy_bench as bench

REPO = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "submitter_stub"
EXAMPLE = config_module.load(REPO / "examples" / "policy" / "policy.toml")

# Captured in slurmkit-ctl (Slurm 24.11.5): `cat /proc/$(cat /run/slurmctld.pid)/stat`
# and two of its threads' schedstat.
STAT = ("17 (slurmctld) S 6 6 1 0 -1 4194560 3177 0 0 0 64 347 0 0 20 0 82 0 734714 "
        "1129074688 4286 18446744073709551615 1 1 0 0 0 0 0 0 9009703 0 0 0 17 0 0 0 0 0 0 "
        "0 0 0 0 0 0 0\n")
SCHEDSTAT = {"17": "1671272023 3125232649 83132\n", "19": "20195968 244932269 1582\n"}


def _snapshot(stat=STAT, threads=None, uptime="7400.25 14000.00\n", comm="slurmctld",
              pid=17):
    return json.dumps({"pid": pid, "comm": comm, "stat": stat,
                       "threads": SCHEDSTAT if threads is None else threads,
                       "clk_tck": 100, "uptime": uptime})


def test_proc_stat_fields_are_counted_from_the_last_parenthesis():
    stat = bench.parse_proc_stat(STAT)
    assert (stat.pid, stat.comm, stat.utime_ticks, stat.stime_ticks, stat.threads,
            stat.starttime_ticks) == (17, "slurmctld", 64, 347, 82, 734714)
    odd = bench.parse_proc_stat(STAT.replace("(slurmctld)", "(a) b (c) 1 2)"))
    assert (odd.comm, odd.utime_ticks, odd.stime_ticks) == ("a) b (c) 1 2", 64, 347)


@pytest.mark.parametrize("text", ["", "17 slurmctld S 6", "17 (slurmctld) S 6 6 1",
                                  STAT.replace(" 64 ", " x ")])
def test_a_line_that_is_not_proc_stat_is_refused(text):
    with pytest.raises(ValueError):
        bench.parse_proc_stat(text)


def test_schedstat_gives_the_time_on_the_cpu():
    assert bench.parse_schedstat(SCHEDSTAT["17"]) == 1671272023
    with pytest.raises(ValueError):
        bench.parse_schedstat("12 34\n")


def test_cpu_between_two_readings_of_the_same_slurmctld():
    before = bench.parse_snapshot(_snapshot())
    after = bench.parse_snapshot(_snapshot(
        stat=STAT.replace(" 64 347 ", " 70 391 "),
        threads={"17": "1991272023 3125232649 83140\n", "23": "5000000 0 3\n"}))
    delta = bench.cpu_between(before, after)
    assert delta.cpu_us == pytest.approx(500_000)           # 50 ticks of 10 ms
    # thread 17: +320 ms; thread 23 is new: +5 ms; thread 19 exited (its time is lost)
    assert delta.threads_cpu_us == pytest.approx(325_000)
    assert delta.threads_exited == 1 and delta.resolution_us == pytest.approx(20_000)
    assert delta.per_job(1000)["cpu_us_per_job"] == pytest.approx(500)
    assert before.age_s == pytest.approx(7400.25 - 7347.14)


def test_a_restarted_slurmctld_voids_the_window():
    before = bench.parse_snapshot(_snapshot())
    restarted = bench.parse_snapshot(_snapshot(stat=STAT.replace(" 734714 ", " 900000 ")))
    with pytest.raises(ValueError, match="void"):
        bench.cpu_between(before, restarted)
    with pytest.raises(ValueError, match="stale pid file"):
        bench.parse_snapshot(_snapshot(comm="sshd"))


def test_the_snapshot_script_reads_a_live_process(tmp_path):
    """SNAPSHOT_SCRIPT, run as bench/policy.py runs it in the controller, here on this
    test's own process."""
    pid_file = tmp_path / "pid"
    pid_file.write_text(f"{os.getpid()}\n")
    output = subprocess.run(["python3", "-c", bench.SNAPSHOT_SCRIPT, str(pid_file)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    snapshot = bench.parse_snapshot(output, expect_comm=comm)
    assert snapshot.pid == os.getpid() and snapshot.cpu_ticks > 0
    assert str(os.getpid()) in snapshot.thread_ns and snapshot.age_s > 0


def test_the_job_mix_is_deterministic_and_mostly_accepted():
    mix = bench.job_mix(2000)
    assert mix == bench.job_mix(2000) and mix != bench.job_mix(2000, seed=1)
    decisions = [decide(EXAMPLE, job, 2003) for job in mix]
    actions = Counter(decision.action for decision in decisions)
    assert 0.10 <= actions["reject"] / len(mix) <= 0.20, actions
    # a variety of GPU counts, both partitions kinds, and every template drawn
    assert {decision.gpus for decision in decisions} >= {1, 2, 4, 8, 16, 32, 40, 48, 64}
    assert {d.changes.get("partition") for d in decisions} >= {
        "guar-team-a,borrow-training", "borrow-training", "guar-team-a",
        "guar-team-b,borrow-batch"}


def test_accepted_shapes_fit_the_docker_cluster_nodes():
    """What the policy accepts must be what Slurm accepts on 4 nodes of 8 GPUs and 2
    CPUs (or the bench would see Slurm refusals)."""
    for job in bench.job_mix(2000):
        if decide(EXAMPLE, job, 2003).action != "accept":
            continue
        nodes = job["max_nodes"] or job["min_nodes"] or 1
        tasks = job["num_tasks"] or nodes * (job["ntasks_per_node"] or 1)
        assert nodes <= 4 and gpu_count(job["tres_per_node"]) <= 8, job
        assert tasks <= 8 and (job["ntasks_per_node"] or 1) <= 2, job  # 2 CPUs a node
        assert job["priority"] == 0, job  # held: the bench never runs a job


def test_submitter_lines_hold_only_what_is_set():
    job = bench.job_mix(1)[0] | {"nice": -5, "account": None}
    line = bench.submitter_line(job)
    fields = dict(field.split("=", 1) for field in line.split("\t"))
    assert fields["nice"] == "-5" and "account" not in fields and fields["priority"] == "0"
    for bad in ({"account": "a\tb"}, {"requeue": 1 << 16}, {"min_nodes": -1},
                {"time_limit": True}, {"qos": 5}):
        with pytest.raises(ValueError):
            bench.submitter_line(job | bad)


def test_the_no_plugin_jobs_carry_the_policy_s_choices():
    job = bench.job_mix(1)[0]
    decision = decide(EXAMPLE, job, 2003)
    assert bench.resolved(job, decision.changes)["partition"] == decision.changes["partition"]
    assert bench.resolved(job, None) == job


@pytest.mark.parametrize("text", ["3 0.5 2 1\nAR\n", "3 0.5 2 1\nAAR\nextra", "x\n",
                                  "2 0.5 2 0\nAA"])
def test_submitter_output_is_checked(text):
    if text.startswith("2 "):
        assert bench.parse_submitter_output(text).outcomes == "AA"
    else:
        with pytest.raises(ValueError):
            bench.parse_submitter_output(text)


def test_the_submitter_sends_every_field_as_given(tmp_path):
    """bench/submitter.c built against stub headers with the real field types: each
    line's fields reach libslurm as written, unset ones stay unset, refusals are
    reported in order."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed for this test (apt-get install gcc)"
    binary = tmp_path / "submitter"
    built = subprocess.run([compiler, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-I", str(STUB), "-o", str(binary), str(REPO / "bench" / "submitter.c"),
                            str(STUB / "libslurm_stub.c")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    jobs = bench.job_mix(200) + [bench.job_mix(1)[0] | {
        "nice": -7, "requeue": 65535, "time_limit": 4294967295, "warn_signal": 12,
        "warn_time": 20, "warn_flags": 0, "req_nodes": "c[1-2]", "ntasks_per_tres": 3}]
    log = tmp_path / "submitted"
    result = subprocess.run([str(binary)], input="".join(bench.submitter_line(job) + "\n"
                                                         for job in jobs),
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SUBMITTER_STUB_LOG": str(log)})
    assert result.returncode == 0, result.stderr
    output = bench.parse_submitter_output(result.stdout)
    assert output.count == len(jobs)
    assert output.outcomes == "".join("R" if job["account"] == "physics" else "A"
                                      for job in jobs)
    assert "refused: Invalid account" in result.stderr
    unset = {key: ("(null)" if key in bench.STRING_FIELDS else
                   str(0xFFFE) if key in bench.U16_FIELDS else str(0xFFFFFFFE))
             for key in bench.SUBMITTER_FIELDS}
    for job, line in zip(jobs, log.read_text().splitlines(), strict=True):
        got = dict(field.split("=", 1) for field in line.split("\t"))
        want = {key: unset[key] if job.get(key) is None else
                str(job[key] + 0x80000000) if key == "nice" else str(job[key])
                for key in bench.SUBMITTER_FIELDS}
        assert {key: got[key] for key in bench.SUBMITTER_FIELDS} == want
        assert (got["name"], got["env_size"], got["std_out"]) == ("bench-policy", "1",
                                                                  "/dev/null")
    bad = subprocess.run([str(binary)], input="account=a\tcolour=blue\n", capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "SUBMITTER_STUB_LOG": str(tmp_path / "none")})
    assert bad.returncode == 2 and "unknown key: colour" in bad.stderr


def _phase(plugin, cpu, rate, refused=10, round_index=0):
    return {"plugin": plugin, "round": round_index, "cpu_us_per_job": cpu,
            "threads_cpu_us_per_job": cpu - 1, "resolution_us_per_job": 20.0,
            "jobs_per_s": rate, "refused": refused, "idle_cpu_us_per_s": 5000}


def test_the_summary_takes_medians_and_compares_with_no_plugin():
    phases = [_phase("none", cpu, rate, 0, r) for r, (cpu, rate) in
              enumerate([(600, 400), (620, 390), (900, 100)])]
    phases += [_phase("python", cpu, rate, 10, r) for r, (cpu, rate) in
               enumerate([(650, 380), (640, 385), (2000, 50)])]
    phases += [_phase("lua", cpu, rate, 10, r) for r, (cpu, rate) in
               enumerate([(900, 300), (950, 290), (990, 280)])]
    summary = bench.summarize(phases, jobs=1000, warmup=50, rounds=3)
    assert (summary["none_cpu_us_per_job"], summary["python_cpu_us_per_job"],
            summary["lua_cpu_us_per_job"]) == (620, 650, 950)
    assert summary["python_added_cpu_us_per_job"] == 30
    assert summary["lua_added_cpu_us_per_job"] == 330
    assert summary["throughput_ratio_vs_none"] == round(380 / 390, 3)
    assert summary["meets_targets"] is True
    slow = [p | {"jobs_per_s": 300} if p["plugin"] == "python" else p for p in phases]
    assert bench.summarize(slow, jobs=1000, warmup=50, rounds=3)["meets_targets"] is False
    with pytest.raises(ValueError, match="no lua phase"):
        bench.summarize([p for p in phases if p["plugin"] != "lua"], jobs=1000, warmup=50,
                        rounds=3)


def test_rounds_rotate_the_order_of_the_plugins():
    orders = bench.round_orders(3)
    assert orders == [("none", "python", "lua"), ("python", "lua", "none"),
                      ("lua", "none", "python")]
    for position in range(3):
        assert {order[position] for order in orders} == set(bench.PLUGINS)
