import os
import sys
import time

import pytest

from slurmkit.errors import CommandNotFoundError, CommandTimeoutError, UserInputError
from slurmkit.slurm.runner import (
    PINNED_ENV,
    LocalRunner,
    RecordingRunner,
    SSHRunner,
    SSHTarget,
    slurm_environment,
)


def test_environment_drops_output_and_submission_overrides():
    env = slurm_environment({"PATH": "/bin", "SQUEUE_FORMAT": "%i", "SBATCH_PARTITION": "x",
                             "SACCT_FORMAT": "jobid", "SLURM_CONF": "/etc/slurm/slurm.conf",
                             "SLURM_TIME_FORMAT": "relative", "SBATCH_ACCOUNT": "keep-me"},
                            keep=["SBATCH_ACCOUNT"])
    assert env == {"PATH": "/bin", "SLURM_CONF": "/etc/slurm/slurm.conf",
                   "SBATCH_ACCOUNT": "keep-me", **PINNED_ENV}


def test_local_runner_returns_output_and_status():
    result = LocalRunner().run([sys.executable, "-c", "import sys; print('out'); "
                                "print('err', file=sys.stderr); sys.exit(3)"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_local_runner_passes_input_and_argv_verbatim():
    hostile = "$(touch /tmp/pwned); `id`; 'quote\" \n"
    result = LocalRunner().run([sys.executable, "-c", "import sys; print(sys.argv[1]); "
                                "print(sys.stdin.read())", hostile], input_text="stdin text")
    assert result.stdout == f"{hostile}\nstdin text\n"


def test_local_runner_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # The child starts a grandchild (as sbatch or ssh helpers would) and both hang.
    child = tmp_path / "child.py"
    child.write_text(
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(grandchild.pid))\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError, match="did not finish within 2 s"):
        LocalRunner().run([sys.executable, str(child)], timeout_s=2)
    assert time.monotonic() - started < 10
    grandchild_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild_pid):
        assert time.monotonic() < deadline, "the grandchild outlived the timeout"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_missing_program_is_a_clear_error():
    with pytest.raises(CommandNotFoundError, match="no-such-slurm-command was not found"):
        LocalRunner().run(["no-such-slurm-command"])


def test_recording_runner_records_and_answers():
    runner = RecordingRunner()
    assert runner.run(["sbatch", "--parsable"]).returncode == 0
    assert runner.calls == [("sbatch", "--parsable")]


@pytest.mark.parametrize("text, expected", [
    ("alice@login:2222", ("login", "alice", 2222)),
    ("alice@127.0.0.1", ("127.0.0.1", "alice", 22)),
    ("bob@[::1]:22", ("::1", "bob", 22)),
])
def test_ssh_target_parse(text, expected):
    target = SSHTarget.parse(text)
    assert (target.host, target.user, target.port) == expected


def test_ssh_target_defaults_to_local_user():
    assert SSHTarget.parse("login").user == os.environ.get("USER", SSHTarget.parse("login").user)


@pytest.mark.parametrize("bad", ["", "alice@", "a b", "alice@host:99999", "alice@host:x"])
def test_ssh_target_rejects_bad_input_with_the_expected_form(bad):
    with pytest.raises(UserInputError, match=r"USER@\]HOST\[:PORT\]|1-65535"):
        SSHTarget.parse(bad)


def test_ssh_remote_command_quotes_every_argument():
    import shlex

    runner = SSHRunner(SSHTarget("login", "alice"))
    argv = ["sbatch", "-J", "a b; rm -rf ~", "--wrap", "echo $(id) `id` 'x'"]
    command = runner.remote_command(argv, 30)
    words = shlex.split(command)
    assert words[-len(argv):] == argv
    assert "SLURM_TIME_FORMAT=%s" in words and "timeout" in words
