"""CLI start-up cost: `slurmkit --help` and `slurmkit submit --dry-run` against a bare
`python -c pass`, all measured in this run (median wall time of repeated runs).

Targets (issue 3): help <= 150 ms, dry-run <= 300 ms. The dry run renders a training
spec with no Slurm reachable (no placement): it measures slurmkit's own cost —
imports, spec validation, template rendering — which lazy imports keep small.

Final line: {"help_ms", "dry_run_ms", "python_ms", ...}
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "21"))


def slurmkit_command() -> list[str]:
    script = Path(sys.executable).with_name("slurmkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "slurmkit"]


def median_ms(argv: list[str], env: dict) -> float:
    subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, check=True)  # warm caches
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    env = {key: value for key, value in os.environ.items() if key != "SLURMKIT_HOST"}
    # No Slurm commands on PATH: the dry run must not try to reach a cluster.
    env["PATH"] = str(Path(sys.executable).parent) + ":/usr/bin:/bin"
    python_ms = median_ms([sys.executable, "-c", "pass"], env)
    help_ms = median_ms([*slurmkit_command(), "--help"], env)
    dry_run_ms = median_ms([*slurmkit_command(), "submit", "examples/specs/train.toml",
                            "--dry-run"], env)
    result = {"help_ms": round(help_ms, 1), "dry_run_ms": round(dry_run_ms, 1),
              "python_ms": round(python_ms, 1), "runs": RUNS,
              "help_target_ms": 150, "dry_run_target_ms": 300,
              "meets_targets": help_ms <= 150 and dry_run_ms <= 300}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
