"""CLI wall time: `slurmkit --help`, the dry run without placement, and the whole
`slurmkit submit --dry-run` with placement on a 100k-GPU cluster, against a bare
`python -c pass`, all measured in this run (median wall time of repeated runs).

The 12,500-node cluster (slurmkit.testing.bigcluster: 8 GPUs a node, fat tree of
32-node leaves, 60 % busy, a day of failures: lemons, 300 nodes that failed once,
1,000-node NODE_FAIL runs with one node named) is rendered once into a temporary
directory as Slurm prints it — `scontrol show nodes --json` (31 MB), `scontrol show
topology`, `sacct --json` of the day's NODE_FAIL runs, `sacctmgr show event` — and
the CLI answers from it through ReplayRunner (`--replay`): what is timed is slurmkit
reading, parsing, assessing health, placing and rendering, as a user waits for it
(Slurm's own time to print those outputs is not included). Measured with and without
the health query, and once with the standard library's JSON parser instead of
msgspec (the baseline for the fast path). One run also checks the result: the
excluded nodes are exactly the generator's lemons.

Targets: help <= 150 ms, dry run without placement <= 300 ms, the 12,500-node dry
run with placement and health <= 1,000 ms (issue 12).

Final line: {"help_ms", "dry_run_ms", "dry_run_12500_nodes_ms",
             "dry_run_12500_nodes_no_health_ms", "dry_run_12500_nodes_stdlib_json_ms",
             "python_ms", "cpu_ms": {...}, "checked", ...}
(``cpu_ms``: median user + system time of the same commands; on a loaded machine the
wall times move, these much less.)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slurmkit.slurm import hostlist  # noqa: E402
from slurmkit.testing import bigcluster  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "21"))
BIG_RUNS = int(os.environ.get("BENCH_BIG_RUNS", "9"))

SPEC = """\
kind = "training"
job_name = "llama-70b"
command = ["python", "train.py", "--config", "cfg/70b.yaml"]
nodes = "900-1000"
gpus_per_node = 8
partition = "gpu"
time_limit = "1-00:00:00"
checkpoint_dir = "/shared/ckpt/llama-70b"
"""

#: Without msgspec: `import msgspec` fails, parse.py falls back to the json module.
STDLIB_JSON = ("import sys; sys.modules['msgspec'] = None; "
               "from slurmkit.cli import main; main(sys.argv[1:])")


def slurmkit_command() -> list[str]:
    script = Path(sys.executable).with_name("slurmkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "slurmkit"]


#: CPU time (user + system) of each measured command, by name: on a shared machine
#: wall time moves with the load, CPU time much less.
CPU_MS: dict[str, float] = {}


def median_ms(argv: list[str], env: dict, runs: int, name: str = "") -> float:
    subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, check=True)  # warm caches
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, check=True)
        times.append((time.perf_counter() - started) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    if name:
        CPU_MS[name] = round(statistics.median(cpu), 1)
    return statistics.median(times)


def main() -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("SLURMKIT_HOST", "SLURMKIT_REPLAY_DIR")}
    # No Slurm commands on PATH: the plain dry run must not try to reach a cluster.
    env["PATH"] = str(Path(sys.executable).parent) + ":/usr/bin:/bin"
    with tempfile.TemporaryDirectory(prefix="slurmkit-bench-cli-") as temp:
        temp_dir = Path(temp)
        env["XDG_CACHE_HOME"] = str(temp_dir / "cache")  # not the user's ~/.cache
        started = time.perf_counter()
        cluster = bigcluster.generate()
        replay = bigcluster.write_replay(cluster, temp_dir / "replay")
        generate_s = time.perf_counter() - started
        spec = temp_dir / "llama.toml"
        spec.write_text(SPEC)
        sizes_mb = {path.name: round(path.stat().st_size / 1e6, 2)
                    for path in sorted(replay.iterdir()) if path.name != "manifest.json"}

        python_ms = median_ms([sys.executable, "-c", "pass"], env, RUNS)
        help_ms = median_ms([*slurmkit_command(), "--help"], env, RUNS)
        dry_run_ms = median_ms([*slurmkit_command(), "submit", "examples/specs/train.toml",
                                "--dry-run"], env, RUNS, "dry_run")
        big = ["--replay", str(replay), "submit", str(spec), "--dry-run"]
        big_ms = median_ms([*slurmkit_command(), *big], env, BIG_RUNS, "dry_run_12500_nodes")
        no_health_ms = median_ms([*slurmkit_command(), *big, "--health-since", "off"], env,
                                 BIG_RUNS, "dry_run_12500_nodes_no_health")
        stdlib_ms = median_ms([sys.executable, "-c", STDLIB_JSON, *big], env, BIG_RUNS,
                              "dry_run_12500_nodes_stdlib_json")

        # The answer, once: the lemons and only them are excluded; none is pinned.
        output = subprocess.run([*slurmkit_command(), *big, "--json"], capture_output=True,
                                env=env, cwd=ROOT, check=True, text=True).stdout
        placement = json.loads(output)["placement"]
        excluded = set(hostlist.expand(placement["exclude"] or ""))
        pinned = set(hostlist.expand(placement["nodelist"] or ""))
        checked = (excluded == cluster.lemons and len(pinned) == 1000
                   and not pinned & cluster.lemons)
    result = {"help_ms": round(help_ms, 1), "dry_run_ms": round(dry_run_ms, 1),
              "dry_run_12500_nodes_ms": round(big_ms, 1),
              "dry_run_12500_nodes_no_health_ms": round(no_health_ms, 1),
              "dry_run_12500_nodes_stdlib_json_ms": round(stdlib_ms, 1),
              "python_ms": round(python_ms, 1), "cpu_ms": CPU_MS,
              "runs": RUNS, "big_runs": BIG_RUNS,
              "recorded_mb": sizes_mb, "node_fail_runs": len(cluster.runs),
              "lemons": len(cluster.lemons), "generate_s": round(generate_s, 2),
              "checked": checked,
              "help_target_ms": 150, "dry_run_target_ms": 300,
              "dry_run_12500_nodes_target_ms": 1000,
              "meets_targets": help_ms <= 150 and dry_run_ms <= 300 and big_ms <= 1000}
    print(json.dumps(result))
    if not checked:
        raise SystemExit(f"wrong placement: excluded {sorted(excluded)[:20]}, "
                         f"lemons {sorted(cluster.lemons)}")


if __name__ == "__main__":
    main()
