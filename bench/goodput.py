"""The goodput report over a million job runs, every output format, against the time a
plain ``csv`` reader takes just to read the same sacct dump, in one run.

The generator writes a realistic ``sacct -D -X -P`` dump (with its header line) on a
12,500-node cluster: every job state, array tasks (``A_T``) and het components
(``J+K``), running and pending jobs, exit codes, node failures, preemptions with the
job that preempted (and Slurm's spurious requeue after some), ``--no-kill`` resizes,
names with '|', newlines and non-ASCII characters. It keeps the truth per job (runs,
node failures, preemptions, spurious requeues, wallclock and productive seconds) and
the report's JSON is checked against it, value by value (``values_checked``).

Each report runs in a child process; its wall time is measured, its CPU time (user +
system of the whole process tree: the report and its parser worker processes, from
getrusage of the reaped children; on a shared machine wall time waits for other
work, CPU time does not), and the peak memory of the whole tree: the bench polls /proc
every 20 ms and sums the resident set of every process whose ancestry leads to the
child (an upper bound: pages shared between forked workers count once per process).
The JSON and the CSV are both checked value by value against the truth.
Final line: {"runs", "seconds", "cpu_seconds", "json_seconds", "json_cpu_seconds",
"csv_seconds", "csv_cpu_seconds", "html_seconds", "html_cpu_seconds", "peak_rss_mb",
"json_peak_rss_mb", "csv_peak_rss_mb", "html_peak_rss_mb", "tree_peak_rss_mb",
"values_checked", "baseline_seconds", "baseline_cpu_seconds", ...}. Every format reads
the same dump. Targets (issues 6, 12 and 13): table <= 10 s, json <= 20 s (and csv and
html, which a user runs as well), tree peak <= 1 GB for every format.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "1000000"))
NOW = 1_802_800_000
COLUMNS = ("JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Restarts",
           "Submit", "Eligible", "Start", "End", "NNodes", "NodeList", "AllocTRES", "ExitCode",
           "JobName")
NAMES = ["train", "sweep", "eval|v2", "sft ünï", "serve-⚡", "llama-70b", "pretrain", "rl"] * 50 \
    + ["multi\nline"]
FINAL = [("COMPLETED", "0:0")] * 30 + [("FAILED", "1:0"), ("CANCELLED by 2001", "0:15"),
                                        ("TIMEOUT", "0:1"), ("OUT_OF_MEMORY", "0:125"),
                                        ("DEADLINE", "0:0"), ("BOOT_FAIL", "0:0")]


def generate(path: Path, runs: int, seed: int = 12) -> tuple[int, dict]:
    """Write the dump; return (runs written, truth per shown job id)."""
    rng = random.Random(seed)
    accounts = [f"team-{chr(97 + i)}" for i in range(20)]
    users = [f"user{i:03d}" for i in range(400)]
    truth: dict[str, dict] = {}
    written, job_id = 0, 1_000_000
    out = open(path, "w", encoding="utf-8")
    out.write("|".join(COLUMNS) + "\n")

    def emit(raw, shown, user, account, partition, qos, state, restart, submit, eligible, start,
             end, nodes, node_list, gpus, exit_code, name):
        nonlocal written
        tres = f"billing={gpus},cpu={64 * nodes},gres/gpu={gpus},mem={512000 * nodes}M," \
               f"node={nodes}" if start else ""
        out.write("|".join((str(raw), shown, user, account, partition, qos, state, str(restart),
                            str(submit), str(eligible), str(start or "Unknown"),
                            str(end or "Unknown"), str(nodes if start else 0),
                            node_list if start else "None assigned", tres, exit_code, name))
                  + "\n")
        written += 1

    def nodes_at(first, count):
        return f"gpu[{first:05d}-{first + count - 1:05d}]" if count > 1 else f"gpu{first:05d}"

    while written < runs:
        job_id += 1
        account, user = rng.choice(accounts), rng.choice(users)
        kind = rng.random()
        shown, raw = str(job_id), job_id
        if kind < 0.05:  # an array task
            shown = f"{job_id}_{rng.randrange(1, 64)}"
        elif kind < 0.07:  # a het component
            shown = f"{job_id}+{rng.randrange(0, 2)}"
        qos, partition = rng.choice((("training", "borrow-training"), ("batch", "borrow-batch"),
                                     ("inference", f"guar-{account}")))
        count = rng.choice((1, 1, 2, 4, 8, 16, 64))
        first = rng.randrange(0, 12500 - count)
        gpus = 8 * count
        name = rng.choice(NAMES)
        submit = NOW - 30 * 86400 + rng.randrange(0, 29 * 86400)
        clock, eligible = submit, submit
        record = {"runs": 0, "node_failures": 0, "preemptions": 0, "spurious": 0,
                  "wallclock": 0, "productive": 0}
        outcome = rng.random()
        interruptions = rng.choices((0, 1, 2, 3), weights=(75, 17, 6, 2))[0]
        start_all = None
        productive = 0
        for restart in range(interruptions + 1):
            last = restart == interruptions
            start = eligible + rng.randrange(0, 3600)
            start_all = start_all or start
            record["runs"] += 1
            if not last:
                end = start + rng.randrange(60, 36000)
                cause = rng.random()
                if cause < 0.6:
                    state = "NODE_FAIL"
                    record["node_failures"] += 1
                    emit(raw, shown, user, account, partition, qos, state, restart, clock, eligible,
                         start, end, count, nodes_at(first, count), gpus, "0:0", name)
                else:  # preempted; a preemptor starts on its first node 2 s after
                    state = "PREEMPTED"
                    record["preemptions"] += 1
                    emit(raw, shown, user, account, partition, qos, state, restart, clock, eligible,
                         start, end, count, nodes_at(first, count), gpus, "0:15", name)
                    job_id += 1
                    emit(job_id, str(job_id), "owner", account, f"guar-{account}", "inference",
                         "COMPLETED", 0, end - 30, end - 30, end + 2, end + 600, 1,
                         nodes_at(first, 1), 8, "0:0", "serve")
                    truth[str(job_id)] = {"runs": 1, "node_failures": 0, "preemptions": 0,
                                          "spurious": 0, "wallclock": 630, "productive": 598}
                clock, eligible = end, end + 31
                continue
            if outcome < 0.03:  # still running
                emit(raw, shown, user, account, partition, qos, "RUNNING", restart, clock,
                     eligible, start, None, count, nodes_at(first, count), gpus, "0:0", name)
                end = NOW
                record["open"] = True
            elif outcome < 0.05 and restart == 0:  # still pending
                emit(raw, shown, user, account, partition, qos, "PENDING", restart, clock,
                     eligible, None, None, count, "", gpus, "0:0", name)
                end = NOW
                record["open"] = True
            elif outcome < 0.07:  # --no-kill: shrunk after losing its last node, one run
                middle = start + rng.randrange(60, 3600)
                end = middle + rng.randrange(60, 3600)
                emit(raw, shown, user, account, partition, qos, "RESIZING", restart, clock,
                     eligible, start, middle, count, nodes_at(first, count), gpus, "0:0", name)
                emit(raw, shown, user, account, partition, qos, "COMPLETED", restart, middle,
                     middle, middle, end, max(count - 1, 1), nodes_at(first, max(count - 1, 1)),
                     8 * max(count - 1, 1), "0:0", name)
                productive += end - start
            elif outcome < 0.09 and restart > 0:  # Slurm's spurious requeue after a grace preemption
                # On nodes of its own: no other job may look like its preemptor by chance.
                end = start + rng.randrange(60, 3600)
                own = f"spare{job_id}"
                emit(raw, shown, user, account, partition, qos, "PREEMPTED", restart, clock,
                     eligible, start, end, 1, own, 8, "0:0", name)
                productive += end - start
                record["spurious"] += 1
                record["runs"] += 1
                emit(raw, shown, user, account, partition, qos, "COMPLETED", restart + 1, end,
                     end + 31, end + 40, end + 41, 1, own, 8, "0:0", name)
                end += 41
            else:
                state, exit_code = rng.choice(FINAL)
                end = start + rng.randrange(60, 36000)
                emit(raw, shown, user, account, partition, qos, state, restart, clock, eligible,
                     start, end, count, nodes_at(first, count), gpus, exit_code, name)
                # A run that failed to boot did no work (and would be run again).
                productive += 0 if state == "BOOT_FAIL" else end - start
        record["wallclock"] = end - submit
        record["productive"] = productive
        truth[shown] = record
    out.close()
    return written, truth


class TreePeak:
    """Peak of the summed RSS of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int):
        self.pid, self.peak_kb, self.done = pid, 0, False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done:
            parents: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as stream:
                        fields = stream.read().rsplit(")", 1)[1].split()
                    parents[int(entry)] = int(fields[1])
                    rss[int(entry)] = int(fields[21]) * 4
                except (OSError, IndexError, ValueError):
                    continue
            tree, grew = {self.pid}, True
            while grew:
                grown = tree | {pid for pid, parent in parents.items() if parent in tree}
                grew, tree = grown != tree, grown
            self.peak_kb = max(self.peak_kb, sum(rss.get(pid, 0) for pid in tree))
            time.sleep(0.02)

    def stop(self) -> float:
        self.done = True
        self.thread.join()
        return self.peak_kb / 1024


def run_child(argv: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, tree peak RSS in MB, stdout, CPU seconds of the tree) of a child
    process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = TreePeak(process.pid)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    peak_mb = peak.stop()
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed: {stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, peak_mb, stdout, cpu


CHECKED = ("job_id", "runs", "node_failures", "preemptions", "spurious_requeues",
           "wallclock_s", "productive_s")


def check(report: dict, truth: dict) -> int:
    """Compare the report's jobs (and totals, when it has them) with the generator's
    truth; return values compared."""
    jobs = {job["job_id"]: job for job in report["jobs"]}
    assert set(jobs) == set(truth), (len(jobs), len(truth))
    checked = 0
    for shown, want in truth.items():
        have = jobs[shown]
        pairs = [(have["runs"], want["runs"]), (have["node_failures"], want["node_failures"]),
                 (have["preemptions"], want["preemptions"]),
                 (have["spurious_requeues"], want["spurious"])]
        if not want.get("open"):  # running and pending jobs end "now", a moving target
            pairs += [(have["wallclock_s"], want["wallclock"]),
                      (have["productive_s"], want["productive"])]
        for got, expected in pairs:
            if abs(got - expected) > 0.05:
                raise SystemExit(f"job {shown}: {have} differs from the truth {want}")
            checked += 1
    if "totals" not in report:
        return checked
    totals = report["totals"]
    for got, expected in ((totals["jobs"], len(truth)),
                          (totals["node_failures"], sum(t["node_failures"] for t in truth.values())),
                          (totals["preemptions"], sum(t["preemptions"] for t in truth.values()))):
        assert got == expected, (got, expected)
        checked += 1
    return checked


FORMATS = ("table", "json", "csv", "html")

BASELINE = """
import csv, sys
rows = 0
with open(sys.argv[1], newline="", encoding="utf-8") as stream:
    for row in csv.reader(stream, delimiter="|"):
        rows += 1
print(rows)
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="slurmkit-bench-goodput-", dir="/var/tmp") as work:
        dump, out = Path(work) / "sacct.txt", Path(work) / "report"
        started = time.perf_counter()
        runs, truth = generate(dump, RUNS)
        print(f"[bench/goodput] generated {runs} runs ({dump.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        baseline_s, _, _, baseline_cpu = run_child([sys.executable, "-c", BASELINE, str(dump)])
        report = [sys.executable, "-m", "slurmkit", "goodput", "--input", str(dump),
                  "--no-progress", "--gpus-total", "100000"]
        measured = {}
        for output_format in FORMATS:
            measured[output_format] = run_child([*report, "--format", output_format, "-o",
                                                 f"{out}.{output_format}"])
            print(f"[bench/goodput] {output_format}: {measured[output_format][0]:.1f} s, "
                  f"CPU {measured[output_format][3]:.1f} s, tree peak "
                  f"{measured[output_format][1]:.0f} MB", file=sys.stderr)
        values = check(json.loads(Path(f"{out}.json").read_text()), truth)
        with open(f"{out}.csv", newline="", encoding="utf-8") as stream:
            values += check({"jobs": [{key: row[key] if key == "job_id" else float(row[key])
                                       for key in CHECKED} for row in csv.DictReader(stream)]},
                            truth)
    (seconds, peak_mb, _, cpu), (json_s, json_mb, _, json_cpu), (csv_s, csv_mb, _, csv_cpu), \
        (html_s, html_mb, _, html_cpu) = (measured[name] for name in FORMATS)
    result = {"runs": runs, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
              "peak_rss_mb": round(peak_mb, 1),
              "json_seconds": round(json_s, 2), "json_cpu_seconds": round(json_cpu, 2),
              "json_peak_rss_mb": round(json_mb, 1),
              "csv_seconds": round(csv_s, 2), "csv_cpu_seconds": round(csv_cpu, 2),
              "csv_peak_rss_mb": round(csv_mb, 1),
              "html_seconds": round(html_s, 2), "html_cpu_seconds": round(html_cpu, 2),
              "html_peak_rss_mb": round(html_mb, 1),
              "tree_peak_rss_mb": round(max(peak_mb, json_mb, csv_mb, html_mb), 1),
              "values_checked": values, "baseline_seconds": round(baseline_s, 2),
              "baseline_cpu_seconds": round(baseline_cpu, 2),
              "target_seconds": 10, "target_json_seconds": 20, "target_peak_rss_mb": 1024,
              "meets_targets": seconds <= 10 and max(json_s, csv_s, html_s) <= 20
              and max(peak_mb, json_mb, csv_mb, html_mb) <= 1024}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
