"""The CLI edge: output formats, errors without tracebacks, exit codes."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slurmkit.cli import cli, main
from slurmkit.cli._context import Connection
from slurmkit.slurm.runner import CommandResult, RecordingRunner


@pytest.fixture
def fake_slurm(monkeypatch, data):
    """Answer Slurm commands from the captured outputs."""
    outputs = {("scontrol", "show", "nodes"): data("scontrol_nodes.json"),
               ("squeue",): data("squeue.json")}

    def respond(argv):
        for prefix, text in outputs.items():
            if argv[:len(prefix)] == prefix:
                return CommandResult(argv, 0, text, "", "test")
        return CommandResult(argv, 1, "", f"{argv[0]}: error: unexpected", "test")

    runner = RecordingRunner(respond)
    monkeypatch.setattr(Connection, "runner", lambda self: runner)
    return outputs


def test_show_nodes_table(fake_slurm):
    result = CliRunner().invoke(cli, ["show", "nodes"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:3] == ["NODE", "STATE", "CPUS"]
    assert "c4" in result.output and "MIXED" in result.output


def test_show_jobs_json_round_trips(fake_slurm):
    result = CliRunner().invoke(cli, ["show", "jobs", "--json"])
    assert result.exit_code == 0
    jobs = json.loads(result.output)
    assert {job["job_id"] for job in jobs} == {3, 6}


def test_malformed_payload_gives_one_line_error_and_exit_1(monkeypatch, capsys):
    runner = RecordingRunner(lambda argv: CommandResult(argv, 0, "{not json", "", "test"))
    monkeypatch.setattr(Connection, "runner", lambda self: runner)
    with pytest.raises(SystemExit) as exited:
        main(["show", "nodes"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot parse scontrol show nodes --json: not valid JSON")
    assert "Traceback" not in err


def test_bad_host_is_a_usage_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--host", "alice@login:99999", "show", "nodes"])
    assert exited.value.code == 2
    assert "1-65535" in capsys.readouterr().err


def test_help_lists_commands_without_importing_them():
    code = ("import sys; from slurmkit.cli import main; sys.argv=['slurmkit','--help'];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert 'slurmkit.cli.show' not in sys.modules, 'show imported'\n"
            "assert 'slurmkit.slurm.client' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "show" in result.stdout
