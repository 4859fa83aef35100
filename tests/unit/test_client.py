import json

import pytest

from slurmkit.errors import ControllerUnreachableError, ParseError, SlurmCommandError
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.runner import CommandResult, RecordingRunner


def answering(returncode=0, stdout="", stderr=""):
    return RecordingRunner(lambda argv: CommandResult(argv, returncode, stdout, stderr, "test"))


def test_unreachable_controller_is_recognised():
    runner = answering(1, stderr="slurm_load_jobs error: Unable to contact slurm controller "
                                 "(connect failure)\n")
    with pytest.raises(ControllerUnreachableError, match="cannot reach the Slurm controller"):
        SlurmClient(runner).jobs()


def test_other_failures_carry_slurms_message():
    runner = answering(1, stderr="sbatch: error: Invalid account or account/partition "
                                 "combination specified\n")
    with pytest.raises(SlurmCommandError, match="Invalid account") as caught:
        SlurmClient(runner).submit("#!/bin/bash\ntrue\n")
    assert not isinstance(caught.value, ControllerUnreachableError)
    assert caught.value.argv[:2] == ["sbatch", "--parsable"]


def test_submit_parses_job_id_and_cluster():
    result = SlurmClient(answering(stdout="1234;skdev\n")).submit("#!/bin/bash\n")
    assert (result.job_id, result.cluster) == (1234, "skdev")


def test_submit_without_job_id_is_a_parse_error():
    with pytest.raises(ParseError, match="no job id"):
        SlurmClient(answering(stdout="sbatch: warning: something\n")).submit("#!/bin/bash\n")


def test_malformed_json_from_a_successful_command_is_a_parse_error():
    with pytest.raises(ParseError, match="scontrol show nodes --json"):
        SlurmClient(answering(stdout='{"nodes": [ truncated')).nodes()


def test_accounting_argv_asks_for_every_run_of_every_user():
    runner = answering(stdout=json.dumps({"jobs": []}))
    SlurmClient(runner).accounting(since="2026-01-01", job_ids=[3, 4], accounts=["team-a"])
    [argv] = runner.calls
    assert argv[:4] == ("sacct", "--duplicates", "--allusers", "--json")
    assert "--allocations" in argv and "--jobs=3,4" in argv and "--accounts=team-a" in argv
    assert "--starttime=2026-01-01" in argv


def test_parsable_accounting_asks_for_the_parsers_columns():
    from slurmkit.slurm.parse import ACCOUNTING_COLUMNS

    runner = answering(stdout="")
    list(SlurmClient(runner).accounting_parsable())
    [argv] = runner.calls
    assert f"--format={','.join(ACCOUNTING_COLUMNS)}" in argv and "--noheader" in argv
    assert ACCOUNTING_COLUMNS[-1] == "JobName"  # the free-text column must be last
