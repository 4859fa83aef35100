"""The SPANK plugin's trigger fan-out (spank/spank_slurmkit.c), compiled on the host
against stub Slurm headers (tests/unit/spank_stub/) and driven by
tests/unit/spank_harness.c with real child processes as tasks. The plugin itself is
built against the real headers in the node image; tests/cluster covers it there."""

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = ["sibling_signalled", "exited_task_not_signalled", "reused_pid_not_signalled",
             "normal_exits_quiet"]


def test_fan_out_signals_only_live_tasks_of_the_step(tmp_path):
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed for this test (apt-get install gcc)"
    binary = tmp_path / "spank_harness"
    # The plugin's own hardened flags (spank/Makefile), warnings as errors.
    built = subprocess.run([compiler, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                            "-Wno-missing-field-initializers", "-D_FORTIFY_SOURCE=2",
                            "-fstack-protector-strong", "-I", str(HERE / "spank_stub"),
                            "-o", str(binary), str(HERE / "spank_harness.c")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [word for name in SCENARIOS for word in ("ok", name)]
