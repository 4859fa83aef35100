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


#: An environment a user may well have on a laptop or a login node: each of these
#: would change what sbatch submits (SBATCH_NO_REQUEUE defeats --requeue,
#: SLURM_CLUSTERS sends the job elsewhere) or what srun does inside the job.
HOSTILE_ENV = {
    "SBATCH_NO_REQUEUE": "1", "SBATCH_GPUS": "64", "SBATCH_TIMELIMIT": "UNLIMITED",
    "SBATCH_EXCLUSIVE": "user", "SBATCH_SIGNAL": "KILL@1", "SBATCH_OPEN_MODE": "truncate",
    "SBATCH_REQUEUE": "0", "SALLOC_PARTITION": "x", "SLURM_CLUSTERS": "elsewhere",
    "SLURM_HINT": "nomultithread", "SLURM_UMASK": "0000", "SLURM_EXIT_ERROR": "0",
    "SLURM_CPUS_PER_TASK": "64", "SRUN_CPUS_PER_TASK": "64", "SLURM_JOB_ID": "7",
    "SLURM_TIME_FORMAT": "relative", "SQUEUE_FORMAT": "%i", "SACCT_FORMAT": "jobid",
}
KEPT = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/alice",
        "SLURM_CONF": "/etc/slurm/slurm.conf", "SLURMKIT_ACCOUNT": "team-a"}


def test_environment_drops_every_inherited_sbatch_and_slurm_variable():
    env = slurm_environment({**HOSTILE_ENV, **KEPT})
    assert env == {**KEPT, **PINNED_ENV}


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_remote_command_scrubs_the_login_node_environment(shell):
    """The exact text sent to sshd, run as sshd does (the login shell's -c), in an
    environment the user's shell start-up files could have exported: nothing that
    changes a submission reaches the command; the pinned time format does."""
    import shlex
    import subprocess

    argv = ["env"]  # the command: print the environment it got
    command = SSHRunner(SSHTarget("login", "alice")).remote_command(argv, 30)
    odd = {"SBATCH_WITH-DASH": "1"} if shell == "sh" else {}  # not a shell name: no exit
    result = subprocess.run([shell, "-c", command], capture_output=True, text=True,
                            env={**HOSTILE_ENV, **KEPT, **odd, "VALUE": "a\nSBATCH_X=1"},
                            timeout=30)
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert not names & set(HOSTILE_ENV) - set(PINNED_ENV), result.stdout
    assert "SLURM_TIME_FORMAT=%s" in result.stdout.splitlines()
    for name, value in KEPT.items():
        assert f"{name}={value}" in result.stdout.splitlines()
    assert shlex.split(command)[-1] == "env"


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


def test_ssh_target_defaults_to_local_user(monkeypatch):
    # getpass.getuser reads LOGNAME, USER, LNAME, USERNAME in that order: pin them all.
    for name in ("LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "carol")
    assert SSHTarget.parse("login").user == "carol"
    assert SSHTarget.parse("dave@login").user == "dave"


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


def _replay_dir(tmp_path, manifest, files=None):
    import json

    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_replay_runner_answers_from_recorded_outputs(tmp_path):
    from slurmkit.slurm.client import SlurmClient
    from slurmkit.slurm.runner import ReplayRunner

    directory = _replay_dir(tmp_path, [
        {"argv": ["scontrol", "show", "topology"], "stdout": "topo.txt"},
        {"argv": ["scontrol"], "stdout": "", "stderr": "scontrol: error: down",
         "returncode": 1}], {"topo.txt": "SwitchName=s Nodes=c1\n"})
    runner = ReplayRunner(directory)
    assert runner.run(["scontrol", "show", "topology"]).stdout == "SwitchName=s Nodes=c1\n"
    failed = runner.run(["scontrol", "ping"])
    assert (failed.returncode, failed.stderr) == (1, "scontrol: error: down")
    unknown = runner.run(["sbatch", "--parsable"])
    assert unknown.returncode == 1 and "no recorded output" in unknown.stderr
    assert runner.calls[-1] == ("sbatch", "--parsable")
    from slurmkit.errors import SlurmCommandError

    with pytest.raises(SlurmCommandError, match="no recorded output"):
        SlurmClient(runner).submit("#!/bin/sh\n")


@pytest.mark.parametrize("manifest, message", [
    ({"argv": ["x"]}, "expected a JSON list"),
    ([{"argv": []}], "entry 0"),
    ([{"argv": ["x"], "returncode": "1"}], "entry 0"),
    ([{"argv": ["x"], "stdout": 5}], "entry 0"),
])
def test_replay_manifest_is_validated(tmp_path, manifest, message):
    from slurmkit.slurm.runner import ReplayRunner

    with pytest.raises(UserInputError, match=message):
        ReplayRunner(_replay_dir(tmp_path, manifest))


def test_replay_never_reads_outside_its_directory(tmp_path):
    from slurmkit.slurm.runner import ReplayRunner

    runner = ReplayRunner(_replay_dir(tmp_path, [{"argv": ["a"], "stdout": "../secret"},
                                                 {"argv": ["b"], "stdout": "/etc/passwd"}]))
    for word in ("a", "b"):
        with pytest.raises(UserInputError, match="outside"):
            runner.run([word])
    with pytest.raises(UserInputError, match="does not exist"):
        ReplayRunner(tmp_path / "missing")


def test_known_hosts_are_read_with_hashed_names_and_bad_lines_skipped(tmp_path):
    import os

    import paramiko

    from slurmkit.slurm.runner import _load_known_hosts

    key = paramiko.RSAKey.generate(1024)
    hashed = paramiko.HostKeys.hash_host("[login]:2222")
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\n{hashed} ssh-rsa {key.get_base64()}\n"
                    "bad ssh-rsa !!!notbase64!!!\nshort\n"
                    f"plain ssh-rsa {key.get_base64()}\n")
    host_keys = paramiko.HostKeys()
    _load_known_hosts(host_keys, path)
    assert host_keys.lookup("[login]:2222")["ssh-rsa"] == key
    assert host_keys.lookup("plain")["ssh-rsa"] == key
    assert host_keys.lookup("bad") is None
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UserInputError, match="FIFO"):
        _load_known_hosts(paramiko.HostKeys(), tmp_path / "fifo")


class _LateOutputChannel:
    """A paramiko channel whose exit status is in before its output: sshd sends the
    status when the command exits, while the last output is still on the way."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)
        self.closed = False
        self.eof_received = False
        self.status_event = self
        self.polls = 0

    # The output arrives one chunk every third poll; EOF after the last one.
    def _tick(self) -> None:
        self.polls += 1
        if not self.chunks:
            self.eof_received = True

    def settimeout(self, _seconds: float) -> None:
        pass

    def wait(self, _seconds: float) -> None:
        self._tick()

    def recv_ready(self) -> bool:
        return bool(self.chunks) and self.polls % 3 == 2

    def recv(self, _size: int) -> bytes:
        self.polls += 1
        return self.chunks.pop(0)

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True


def test_ssh_output_is_read_to_its_end_not_to_the_exit_status():
    from slurmkit.slurm.runner import _drain

    chunks = [b'{"jobs": [', b'{"job_id": 1},', b'{"job_id": 2}', b"]}"]
    stdout, stderr = _drain(_LateOutputChannel(chunks), time.monotonic() + 10)
    assert stdout == '{"jobs": [{"job_id": 1},{"job_id": 2}]}' and stderr == ""
