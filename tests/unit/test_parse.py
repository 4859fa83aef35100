"""Parsers against output captured from the docker-slurm cluster (Slurm 24.11.5)."""

import json

import pytest

from slurmkit.errors import ParseError, SlurmCommandError
from slurmkit.slurm import parse


def test_nodes_json(data):
    nodes = {node.name: node for node in parse.parse_nodes_json(data("scontrol_nodes.json"))}
    assert sorted(nodes) == ["c1", "c2", "c3", "c4"]
    c4 = nodes["c4"]
    assert c4.address == "10.77.0.24"
    assert c4.states == {"MIXED"} and c4.is_usable and not c4.is_idle
    assert (c4.cpus, c4.alloc_cpus, c4.gpus, c4.gpus_used) == (2, 1, 8, 4)
    assert nodes["c1"].is_idle and nodes["c1"].partitions == ("main",)


def test_partitions_json(data):
    [main] = parse.parse_partitions_json(data("scontrol_partitions.json"))
    assert main.name == "main" and main.state == "UP"
    assert main.nodes == ("c1", "c2", "c3", "c4")
    assert main.max_time_min is None  # MaxTime=INFINITE


def test_sinfo_json_gives_every_node_its_state(data):
    states = parse.parse_sinfo_json(data("sinfo.json"))
    assert set(states) == {"c1", "c2", "c3", "c4"}
    assert all(isinstance(flags, frozenset) and flags for flags in states.values())


def test_jobs_json_running_and_requeued_pending(data):
    jobs = {job.job_id: job for job in parse.parse_jobs_json(data("squeue.json"))}
    running = jobs[6]
    assert running.state == "RUNNING" and running.nodes == ("c4",)
    assert running.allocated_tres["gres/gpu"] == 4 and running.time_limit_min is None
    pending = jobs[3]
    assert pending.name == "train|v2 ünï"  # '|' and unicode survive --json
    assert pending.state == "PENDING" and pending.reason == "BeginTime"
    assert pending.restart_count == 1 and pending.nodes == ()


def test_accounting_json_has_one_record_per_run(data):
    records = parse.parse_accounting_json(data("sacct_D.json"))
    by_id = {}
    for record in records:
        by_id.setdefault(record.display_id, []).append(record)
    [requeued] = by_id["3"]
    # PENDING+REQUEUED in JSON is what sacct's text calls REQUEUED.
    assert requeued.state == "REQUEUED" and requeued.state_flags == ("PENDING", "REQUEUED")
    assert requeued.nodes == ("c1", "c2") and requeued.restarts == 0
    # The last array task keeps the array's own job id (5), others get new ones.
    assert by_id["5_3"][0].job_id == 5 and by_id["5_1"][0].job_id == 7
    assert by_id["5_1"][0].array_job_id == 5 and by_id["5_1"][0].array_task_id == 1
    running = by_id["6"][0]
    assert running.end_epoch_s is None and running.gpus == 4


def test_accounting_json_and_parsable2_agree(data):
    from_json = {(r.job_id, r.restarts): r for r in
                 parse.parse_accounting_json(data("sacct_D_steps.json"))}
    from_text = {(r.job_id, r.restarts): r for r in
                 parse.parse_accounting_parsable2(data("sacct_D_parsable2.txt").splitlines())}
    assert set(from_json) == set(from_text)
    for key, text_record in from_text.items():
        json_record = from_json[key]
        for field in ("display_id", "name", "user", "account", "partition", "state", "exit_code",
                      "restarts", "submit_epoch_s", "start_epoch_s", "nodes", "node_count"):
            assert getattr(json_record, field) == getattr(text_record, field), (key, field)
        assert [s.step_id for s in json_record.steps] == [s.step_id for s in text_record.steps]


def test_parsable2_repairs_pipes_and_newlines_in_job_names(data):
    names = {r.job_id: r.name for r in
             parse.parse_accounting_parsable2(data("sacct_D_parsable2.txt").splitlines())}
    assert names[11] == "a|b|c"
    assert names[10] == "multi\nline|name"
    assert names[12] == "ünï⚡"


def test_parsable2_header_must_match_columns():
    lines = ["JobIDRaw|State", "1|COMPLETED"]
    with pytest.raises(ParseError, match="header"):
        list(parse.parse_accounting_parsable2(lines, header=True))


def test_parsable2_rejects_a_truncated_first_row():
    with pytest.raises(ParseError, match="fields"):
        list(parse.parse_accounting_parsable2(["12|12|alice"]))


@pytest.mark.parametrize("payload", ["", "{", "[1, 2]", '{"jobs": 3}', "<html>oops</html>"])
def test_malformed_json_raises_parse_error_naming_the_command(payload):
    with pytest.raises(ParseError, match="squeue --json"):
        parse.parse_jobs_json(payload)


def test_errors_inside_a_json_payload_become_a_command_error():
    payload = json.dumps({"jobs": [], "errors": [{"description": "Invalid job id specified",
                                                  "error_number": 2017}]})
    with pytest.raises(SlurmCommandError, match="Invalid job id"):
        parse.parse_accounting_json(payload)


def test_a_wrongly_typed_entry_names_its_index():
    payload = json.dumps({"nodes": [{"name": "c1", "cpus": "many"}]})
    with pytest.raises(ParseError, match="entry 0"):
        parse.parse_nodes_json(payload)


@pytest.mark.parametrize("text, count", [
    ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2(IDX:0-1),gpu:v100:1(IDX:0)", 3),
    ("gpu", 1), ("nic:2", 0), ("", 0), ("gres/gpu=4", 4), ("gres/gpu:a100=2", 2),
    ("gpu:h100:8(S:0-1),nic:1", 8),
])
def test_gres_count(text, count):
    assert parse.gres_count(text) == count


def test_tres_string_and_list_agree():
    as_text = parse.tres("cpu=2,mem=4G,gres/gpu=8,node=1,energy=-2")
    as_list = parse.tres([{"type": "cpu", "name": "", "count": 2},
                          {"type": "mem", "name": "", "count": 4096},
                          {"type": "gres", "name": "gpu", "count": 8},
                          {"type": "node", "name": "", "count": 1},
                          {"type": "energy", "name": "", "count": -2}])
    assert as_text["mem"] == as_list["mem"] == 4096
    assert as_text["gres/gpu"] == as_list["gres/gpu"] == 8
    assert "energy" not in as_list


def test_numbers_and_times():
    assert parse.number({"set": True, "infinite": False, "number": 5}) == 5
    assert parse.number({"set": False, "infinite": False, "number": 0}) is None
    assert parse.number({"set": True, "infinite": True, "number": 0}, default=-1) == -1
    assert parse.epoch(4294967294) is None and parse.epoch(0) is None
    assert parse.epoch(1795850709) == 1795850709


def test_state_precedence_follows_slurm():
    assert parse.job_state(["PENDING", "REQUEUED"])[0] == "REQUEUED"
    assert parse.job_state(["RUNNING", "COMPLETING"])[0] == "COMPLETING"
    assert parse.job_state(["PREEMPTED"])[0] == "PREEMPTED"
    assert parse.job_state(["SOMETHING_NEW"])[0] == "SOMETHING_NEW"
    assert parse.job_state([])[0] == "UNKNOWN"


def test_exit_status_forms():
    assert parse.exit_status("2:15") == (2, 15)
    assert parse.exit_status("0:0") == (0, None)
    assert parse.exit_status({"return_code": {"set": True, "number": 1},
                              "signal": {"id": {"set": True, "number": 9}}}) == (1, 9)


def test_nodes_parse_the_same_with_and_without_msgspec(data, monkeypatch):
    """msgspec is the fast path for 12,500-node outputs; without it (Debian's nodes run
    from source) the json module must give the very same records and errors."""
    import sys

    from slurmkit.errors import ParseError, SlurmCommandError
    from slurmkit.slurm import parse
    from slurmkit.testing import bigcluster

    texts = [data("scontrol_nodes.json"),
             bigcluster.render(bigcluster.generate(2000, lemons=2, failed_once=10, big_runs=2))[
                 "scontrol_nodes.json"]]
    bad = ['{"nodes": [{"cpus": 1}]}', '{"nodes": [5]}', '{"nodes": 5}', "[1]", "x",
           '{"errors": [{"description": "boom"}], "nodes": []}', '{"errors": 5, "nodes": []}']

    def outcomes():
        results = [parse.parse_nodes_json(text) for text in texts]
        for text in bad:
            try:
                parse.parse_nodes_json(text)
            except (ParseError, SlurmCommandError) as error:
                results.append(type(error).__name__)
        return results

    parse._node_decoder.cache_clear()
    assert parse._node_decoder() is not None, "msgspec is a dependency: install it"
    fast = outcomes()
    monkeypatch.setitem(sys.modules, "msgspec", None)  # import msgspec -> ImportError
    parse._node_decoder.cache_clear()
    try:
        assert parse._node_decoder() is None
        assert outcomes() == fast
    finally:
        parse._node_decoder.cache_clear()
    assert len(fast[1]) == 2000 and len(fast) == 2 + len(bad)
