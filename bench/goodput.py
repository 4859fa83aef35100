"""The goodput report over a million job runs, against the time a plain ``csv``
reader takes just to read the same sacct dump, in one run.

The generator writes a synthetic ``sacct -D -X -P`` dump (with its header line): about
650,000 jobs on a 12,500-node cluster, a quarter of them requeued (node failures,
preemptions, up to 5 runs), job names with '|', newlines and non-ASCII characters.
The report (``slurmkit goodput --input DUMP --format table``) runs in a child process
whose wall time and peak RSS are measured; so is the baseline (``csv.reader`` over the
same file, nothing else).

Targets (issue 6): <= 10 s and <= 1 GB peak memory for 1,000,000 runs.
Final line: {"runs", "seconds", "peak_rss_mb", "baseline_seconds", ...}
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "1000000"))
COLUMNS = ("JobIDRaw", "JobID", "User", "Account", "Partition", "QOS", "State", "Restarts",
           "Submit", "Eligible", "Start", "End", "ElapsedRaw", "NNodes", "NodeList",
           "AllocTRES", "ExitCode", "JobName")


def generate(path: Path, runs: int, seed: int = 6) -> int:
    randomness = random.Random(seed)
    accounts = [f"team-{chr(97 + i)}" for i in range(20)]
    users = [f"user{i:03d}" for i in range(400)]
    classes = [("inference", "guar-"), ("training", "borrow-"), ("batch", "borrow-")]
    names = ["train", "eval|v2", "sft ünï", "llama\n70b", "serve-⚡", "sweep"]
    now = 1_800_000_000
    written = 0
    job_id = 1_000_000
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("|".join(COLUMNS) + "\n")
        while written < runs:
            job_id += 1
            account = randomness.choice(accounts)
            qos, prefix = randomness.choice(classes)
            partition = prefix + (account if prefix == "guar-" else qos)
            nodes = randomness.choice((1, 1, 2, 4, 8, 16, 64))
            first_node = randomness.randrange(0, 12500 - nodes)
            node_list = f"gpu[{first_node:05d}-{first_node + nodes - 1:05d}]" if nodes > 1 \
                else f"gpu{first_node:05d}"
            submit = now + randomness.randrange(0, 30 * 86400)
            count = randomness.choices((1, 2, 3, 4, 5), weights=(75, 17, 5, 2, 1))[0]
            name = randomness.choice(names)
            user = randomness.choice(users)
            clock = submit
            for restart in range(count):
                if written >= runs:
                    break
                last = restart == count - 1
                eligible = clock if restart == 0 else clock + 31
                start = eligible + randomness.randrange(0, 3600)
                elapsed = randomness.randrange(60, 36000)
                end = start + elapsed
                state = "COMPLETED" if last else randomness.choice(("NODE_FAIL", "PREEMPTED"))
                fields = (str(job_id), str(job_id), user, account, partition, qos, state,
                          str(restart), str(clock), str(eligible), str(start), str(end),
                          str(elapsed), str(nodes), node_list,
                          f"billing={8 * nodes},cpu={64 * nodes},gres/gpu={8 * nodes},"
                          f"mem={512000 * nodes}M,node={nodes}", "0:0", name)
                stream.write("|".join(fields) + "\n")
                written += 1
                clock = end
    return written


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed: {result.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak_kb, before) / 1024, result.stdout


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
        dump = Path(work) / "sacct.txt"
        started = time.perf_counter()
        runs = generate(dump, RUNS)
        print(f"[bench/goodput] generated {runs} runs ({dump.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        baseline_s, _, _ = run_child([sys.executable, "-c", BASELINE, str(dump)])
        # The report is measured second: its peak RSS is then the largest of the two.
        seconds, peak_mb, table = run_child([sys.executable, "-m", "slurmkit", "goodput",
                                             "--input", str(dump), "--format", "table",
                                             "--gpus-total", "100000", "--no-progress"])
        print(table.splitlines()[0], file=sys.stderr)
    result = {"runs": runs, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
              "baseline_seconds": round(baseline_s, 2), "target_seconds": 10,
              "target_peak_rss_mb": 1024,
              "meets_targets": seconds <= 10 and peak_mb <= 1024}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
