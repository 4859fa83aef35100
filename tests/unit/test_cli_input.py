"""Bad input gets one line ``error: ...`` and exit 2 (1 when the world failed), never a
traceback, never a hang: the cases found by the hostile-input review (issue 12), each
through the CLI. The generated counterpart is test_cli_fuzz.py."""

import os

import pytest
from click.testing import CliRunner

from slurmkit.cli import cli

PLAN = ["plan", "--gpus-per-node", "8", "--model-gb", "10", "--gpu-memory-gb", "80",
        "--global-batch", "4096", "--micro-batch", "2"]


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('kind = "training"\ncommand = ["python", "train.py"]\nnodes = "3-4"\n')
    return path


def invoke(args, env=None, input=None):
    env = {"SLURMKIT_HOST": None, "SLURMKIT_REPLAY_DIR": None, **(env or {})}
    return CliRunner().invoke(cli, args, env=env, input=input)


def one_error_line(result, code=2, contains=""):
    """Exit ``code``, stderr ends in one ``error: ...`` line, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    assert contains in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.timeout(30)
def test_a_ten_million_node_range_is_refused_at_once(slurm, spec):
    # Before: 40 s of placement attempts, one per count.
    one_error_line(invoke(["submit", str(spec), "-N", "1-10000000", "--dry-run"]),
                   contains="at most 1000000 nodes")


@pytest.mark.timeout(30)
def test_a_twenty_digit_node_count_is_refused(slurm, spec):
    # Before: never ended.
    one_error_line(invoke(["submit", str(spec), "-N", "1-" + "9" * 20, "--dry-run"]),
                   contains="at most 1000000 nodes")
    one_error_line(invoke(["topology", "place", "-N", "9" * 20]), contains="at most")


@pytest.mark.timeout(30)
def test_plan_bounds_the_gpu_count_and_refuses_nan():
    # Before: 10**15 GPUs hung; NaN GB printed a plan.
    one_error_line(invoke([*PLAN, "--gpus", str(10 ** 15)]), contains="--gpus")
    one_error_line(invoke([*PLAN, "--gpus", "16", "--model-gb", "nan"]), contains="--model-gb")
    one_error_line(invoke([*PLAN, "--gpus", "16", "--gpu-memory-gb", "inf"]))
    result = invoke([*PLAN, "--gpus", "10000000", "--global-batch", "1000000000",
                     "--micro-batch", "1"])
    assert result.exit_code == 0 and "gpus_used=10000000/10000000" in result.output


def test_plan_reads_the_node_count_from_the_job_environment():
    one_error_line(invoke(PLAN, env={"SLURM_JOB_NUM_NODES": "abc"}),
                   contains="SLURM_JOB_NUM_NODES='abc'")
    one_error_line(invoke(PLAN, env={"SLURM_JOB_NUM_NODES": "٣"}))
    result = invoke(PLAN, env={"SLURM_JOB_NUM_NODES": "2"})
    assert result.exit_code == 0 and "gpus_used=16/16" in result.output


def test_plan_cli_bounds_match_the_library():
    from slurmkit import plan
    from slurmkit.cli import plan as plan_cli

    for name in ("MAX_GPUS", "MAX_GPUS_PER_NODE", "MAX_BATCH", "MAX_PP", "MAX_LAYERS"):
        assert getattr(plan_cli, name) == getattr(plan, name), name


@pytest.mark.timeout(30)
def test_a_spec_that_is_a_fifo_or_a_device_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "job.toml"
    os.mkfifo(fifo)
    one_error_line(invoke(["render", "-f", str(fifo)]), contains="FIFO")
    one_error_line(invoke(["render", "-f", "/dev/zero"]), contains="character device")


def test_bad_spec_files_are_input_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'command = ["\xff"]\n')
    one_error_line(invoke(["render", "-f", str(bad)]), contains="not valid UTF-8")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    one_error_line(invoke(["render", "-f", str(loop)]), contains="symbolic link loop")
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    one_error_line(invoke(["render", "-f", str(deep)]), contains="nested too deeply")


@pytest.mark.timeout(30)
def test_templates_are_read_through_the_bounded_reader(tmp_path, spec):
    templates = tmp_path / "templates"
    templates.mkdir()
    os.mkfifo(templates / "training.sbatch.j2")
    one_error_line(invoke(["render", "-f", str(spec), "--template-dir", str(templates)]),
                   contains="template")
    (templates / "training.sbatch.j2").unlink()
    (templates / "training.sbatch.j2").write_bytes(b"\xff\n")
    one_error_line(invoke(["render", "-f", str(spec), "--template-dir", str(templates)]),
                   contains="not valid UTF-8")
    (templates / "training.sbatch.j2").write_text("{% if %}\n")
    one_error_line(invoke(["render", "-f", str(spec), "--template-dir", str(templates)]),
                   contains="line 1")


def test_memory_must_be_a_finite_size(spec):
    for value in ("inf", "nan", "1e400", "-5G", "٣G", "99999999999999999999T"):
        one_error_line(invoke(["render", "-f", str(spec), "--mem", value]), contains="--mem")
    assert "#SBATCH --mem=\"65536M\"" in invoke(["render", "-f", str(spec), "--mem", "64G"]).output


def test_times_and_counts_take_ascii_digits_only(spec):
    one_error_line(invoke(["render", "-f", str(spec), "-t", "٣٠"]), contains="-t")
    one_error_line(invoke(["render", "-f", str(spec), "-t", "9" * 5000]), contains="-t")
    one_error_line(invoke(["render", "-f", str(spec), "-N", "٣"]), contains="-N")


@pytest.mark.parametrize("line, message", [
    ('{"user": "alice", "account": "team-a", "gpus": 1e23}', "gpus = 1e+23"),
    ('{"user": "alice", "gpus": "1e23"}', "gpus = '1e23'"),
    ('{"user": "alice", "gpus_per_node": 1e400}', "gpus_per_node = inf"),
    ('{"nodes": "abc"}', "nodes = 'abc'"),
    ('{"nodes": 1e30}', "nodes = 1e+30"),
    ('{"time": "x"}', "time = 'x'"),
    ('{"submit_uid": "x"}', "submit_uid = 'x'"),
    ('{"user": ["a"]}', "user = ['a']"),
    ('{"hold": "yes"}', "hold = 'yes'"),
    ("[" * 100000, "line 1"),
    ("5", "expected a JSON object"),
])
def test_policy_simulate_refuses_bad_job_lines(line, message):
    result = invoke(["policy", "simulate", "examples/policy/policy.toml"], input=line + "\n")
    one_error_line(result, contains=message)


def test_policy_simulate_reads_files_through_the_bounded_reader(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"user": "\xff"}\n')
    one_error_line(invoke(["policy", "simulate", "examples/policy/policy.toml", str(jobs)]),
                   contains="not valid UTF-8")
    one_error_line(invoke(["policy", "simulate", "examples/policy/policy.toml", "/dev/zero"]),
                   contains="character device")
    one_error_line(invoke(["policy", "check", "/dev/zero"]), contains="not a regular file")
    missing = one_error_line(invoke(["policy", "simulate", str(tmp_path / "none.toml")]))
    assert "does not exist" in missing


def test_a_missing_ssh_key_is_reported_as_such_not_as_a_host_problem(tmp_path):
    # Before: "cannot open an SSH connection ...; check the host name".
    line = one_error_line(invoke(["--host", "alice@127.0.0.1:1", "--ssh-key",
                                  str(tmp_path / "id_missing"), "show", "nodes"]))
    assert "SSH key file" in line and "does not exist" in line and "host name" not in line
    garbage = tmp_path / "id_garbage"
    garbage.write_text("not a key\n")
    one_error_line(invoke(["--host", "alice@127.0.0.1:1", "--ssh-key", str(garbage), "show",
                           "nodes"]), contains="not a private key")


def test_a_non_utf8_known_hosts_is_an_input_error(tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(b"login ssh-ed25519 \xff\xfe\n")
    one_error_line(invoke(["--host", "alice@127.0.0.1:1", "--known-hosts", str(known_hosts),
                           "show", "nodes"]), contains="not valid UTF-8")


def test_bad_ssh_targets_are_input_errors():
    for target in ("alice@login:" + "9" * 5000, "alice@login:٢٢", "alice@log\x1bin"):
        one_error_line(invoke(["--host", target, "show", "nodes"]), contains="SSH target")


def test_health_since_is_one_plain_word(slurm, spec):
    one_error_line(invoke(["submit", str(spec), "--dry-run", "--health-since",
                           "now format=User"]), contains="--health-since")


def test_every_error_is_one_line_with_control_characters_escaped(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('command = ["x"]\ngpus = 8\nkind = "x"\n')
    line = one_error_line(invoke(["render", "-f", str(bad)]))
    assert "unknown key 'gpus'" in line and "kind = 'x'" in line
    from slurmkit.cli import one_line

    assert one_line("a\x1b]0;owned\x07b\nc") == "a\\x1b]0;owned\\x07b; c"
    usage = one_error_line(invoke(["submit"]), contains="Missing argument")
    assert "submit --help'" in usage


def test_a_bug_is_one_line_too(monkeypatch, slurm, spec):
    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr("slurmkit.submission.choose_placement", broken)
    result = invoke(["submit", str(spec), "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith(
        "error: internal error (a bug in slurmkit): TypeError: a bug")
    monkeypatch.setenv("SLURMKIT_DEBUG", "1")
    result = CliRunner().invoke(cli, ["submit", str(spec), "--dry-run"])
    assert isinstance(result.exception, TypeError)  # the traceback, on request


def test_export_adds_to_any_env_the_file_may_hold(tmp_path):
    # Before: an env list (or a bad env) in the file plus --export was an internal error.
    listed = tmp_path / "listed.toml"
    listed.write_text('command = ["x"]\nenv = ["A=1", "B=0"]\n')
    result = invoke(["render", "-f", str(listed), "--export", "B=2"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("export")] == \
        ["export A=1", "export B=2"]
    bad = tmp_path / "bad.toml"
    bad.write_text('command = ["x"]\nenv = "A=1"\n')
    one_error_line(invoke(["render", "-f", str(bad), "--export", "B=2"]),
                   contains="expected a table of NAME")
