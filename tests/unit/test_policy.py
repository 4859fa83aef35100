"""The job-submit policy: configuration, decisions, Slurm shape, simulation."""

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurmkit.errors import UserInputError
from slurmkit.policy import config as config_module
from slurmkit.policy import runtime as runtime_module
from slurmkit.policy.decide import (
    INFINITE32,
    SETTABLE_FIELDS,
    Decision,
    _decide,
    _decide_modify,
    decide,
    decide_modify,
    gpu_count,
    gpus_requested,
)
from slurmkit.policy.simulate import job_desc_from_description, simulate
from slurmkit.policy.slurmconf import render_fragment, render_shim_conf, sacctmgr_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy" / "policy.toml"


@pytest.fixture(scope="module")
def policy():
    return config_module.load(EXAMPLE)


def job(**values):
    base = {"user": "alice", "min_nodes": 1, "tres_per_node": None, "tres_per_job": None,
            "tres_per_task": None, "account": None, "qos": None, "partition": None,
            "priority": None, "nice": None, "requeue": None, "warn_signal": None,
            "time_limit": None, "num_tasks": None}
    base.update(values)
    return base


def test_example_policy_loads(policy):
    assert set(policy.queues) == {"team-a", "team-b"} and policy.classes["inference"].rank == 3
    assert policy.queues_of("carol") == [policy.queues["team-a"], policy.queues["team-b"]]


def test_config_errors_are_all_reported_with_their_section():
    with pytest.raises(UserInputError) as caught:
        config_module.from_dict({
            "classes": {"Training": {}, "batch": {"rank": 0, "signal": "USR1", "bogus": 1}},
            "queues": {"q": {"classes": ["nope"], "users": [], "guaranteed_gpus": -1}},
            "extra": {}}, source="p.toml")
    message = str(caught.value)
    for fragment in ("p.toml", "unknown section [extra]", "[classes.Training]",
                     "[classes.batch] rank = 0", "never USR1", "unknown key 'bogus'",
                     "unknown class 'nope'", "users is empty", "guaranteed_gpus = -1"):
        assert fragment in message, fragment


def test_guaranteed_fit_may_also_borrow(policy):
    decision = decide(policy, job(qos="inference", tres_per_node="gres/gpu:8"), 2001)
    assert decision.action == "accept"
    assert decision.changes["partition"] == "guar-team-a,borrow-inference"
    assert decision.changes["qos"] == "inference" and decision.changes["account"] == "team-a"
    assert decision.changes["requeue"] == 1 and decision.changes["warn_signal"] == 12
    assert decision.changes["warn_time"] == 15


def test_over_the_guarantee_only_borrows(policy):
    decision = decide(policy, job(user="bob", account="team-b", min_nodes=4,
                                  tres_per_node="gres/gpu:8"), 2002)
    assert decision.changes["partition"] == "borrow-training" and decision.gpus == 32


def test_over_guarantee_plus_borrow_is_rejected_with_the_limits(policy):
    decision = decide(policy, job(min_nodes=5, tres_per_node="gres/gpu:8"), 2001)
    assert decision.action == "reject"
    assert "40 GPUs" in decision.message and "16 guaranteed + 16 borrowed" in decision.message


@pytest.mark.parametrize("values, fragment", [
    (dict(user="bob", account="team-a"), "may not submit to queue team-a; your queues: team-b"),
    (dict(qos="urgent"), "'urgent' is not a workload class"),
    (dict(user="bob", qos="inference"), "queue team-b does not run inference jobs"),
    (dict(account="physics"), "account 'physics' is not a queue"),
    (dict(user="mallory"), "not in any queue"),
    (dict(priority=99999), "only operators may set --priority"),
    (dict(nice=-5), "negative --nice"),
    (dict(partition="main"), "partition(s) main are not open"),
    (dict(qos="inference", time_limit=100000), "exceeds the inference class maximum"),
])
def test_rejections_say_what_to_change(policy, values, fragment):
    decision = decide(policy, job(**values), 2001)
    assert decision.action == "reject" and fragment in decision.message


def test_user_may_narrow_partitions_to_the_guarantee(policy):
    decision = decide(policy, job(partition="guar-team-a"), 2001)
    assert decision.changes["partition"] == "guar-team-a" and "requeue" not in decision.changes


def test_operators_pass_unchanged(policy):
    assert decide(policy, job(user="root", account="anything"), 0).changes == {}
    assert decide(policy, job(user="slurm", qos="whatever"), 64030).action == "accept"


def test_hold_is_not_a_priority_change(policy):
    assert decide(policy, job(priority=0), 2001).action == "accept"


def test_batch_gets_its_default_time(policy):
    assert decide(policy, job(qos="batch"), 2001).changes["time_limit"] == 60


@pytest.mark.parametrize("values, gpus", [
    (dict(min_nodes=2, tres_per_node="gres/gpu:8"), 16),
    (dict(tres_per_job="gres/gpu:12"), 12),
    (dict(num_tasks=6, tres_per_task="gres/gpu:1"), 6),
    (dict(min_nodes=2, tres_per_node="gres/gpu:h100:4,gres/nic:1"), 8),
    (dict(min_nodes=3, tres_per_node="gres/gpu=2"), 6),
    (dict(), 0),
])
def test_gpu_counting(values, gpus):
    assert gpus_requested(job(**values)) == gpus


def test_modify_protects_what_the_policy_sets(policy):
    assert decide_modify(policy, {"user": "alice", "qos": "inference"}, 2001).action == "reject"
    assert decide_modify(policy, {"user": "alice", "priority": 10}, 2001).action == "reject"
    assert decide_modify(policy, {"user": "alice", "time_limit": 30}, 2001).action == "accept"
    assert decide_modify(policy, {"user": "root", "qos": "inference"}, 0).action == "accept"


def test_fragment_ranks_partitions(policy):
    text = render_fragment(policy)
    assert "PreemptType=preempt/partition_prio" in text and "JobSubmitPlugins=python" in text
    assert ("PartitionName=guar-team-a Nodes=c[1-4] AllowAccounts=team-a QOS=quota-team-a "
            "PriorityTier=1000 PreemptMode=OFF") in text
    assert "PartitionName=borrow-inference Nodes=c[1-4] PriorityTier=30 PreemptMode=REQUEUE " \
           "GraceTime=15" in text
    assert "PartitionName=borrow-batch Nodes=c[1-4] PriorityTier=10" in text


def test_sacctmgr_plan_sets_quotas_and_caps(policy):
    steps = {what: argv for what, _, argv in sacctmgr_plan(policy, "skdev")}
    assert "GrpTRES=gres/gpu=16" in steps["qos quota-team-a quota"]
    assert "GrpTRES=gres/gpu=32" in steps["account team-b limits"]
    assert "QOS=training,batch" in steps["account team-b limits"]
    assert all(argv[0] == "sacctmgr" for argv in steps.values())


def test_simulate_reads_sbatch_shaped_descriptions(policy):
    results = list(simulate(policy, [
        {"user": "alice", "qos": "inference", "nodes": 1, "gpus_per_node": 8, "hold": True},
        {"user": "bob", "account": "team-a"},
    ]))
    assert [r["action"] for r in results] == ["accept", "reject"]
    assert results[0]["changes"]["partition"] == "guar-team-a,borrow-inference"
    with pytest.raises(UserInputError, match="unknown description keys gpu"):
        job_desc_from_description({"user": "a", "gpu": 1})


def test_simulate_cli(tmp_path):
    from click.testing import CliRunner

    from slurmkit.cli import cli

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"user": "carol", "account": "team-b", "qos": "batch"}\n\n# comment\n'
                    '{"user": "carol", "qos": "inference"}\n')
    result = CliRunner().invoke(cli, ["policy", "simulate", str(EXAMPLE), str(jobs)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["changes"].get("partition") for line in lines] == \
        ["guar-team-b,borrow-batch", "guar-team-a,borrow-inference"]



# ------------------------------------------------------------------- configuration input

def _example_with(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("old, new, fragment", [
    ('users = ["alice", "carol"]', 'users = "bob"', "[queues.team-a] users = 'bob': expected "
     "a list of user names"),
    ("grace_s = 5\n", 'grace_s = 5\nborrow = "false"\n', "[classes.batch] borrow = 'false': "
     "expected true or false"),
    ('nodes = "c[1-4]"', 'nodes = "c[1-4]"\noperators = 5', "[defaults] operators = 5: "
     "expected a list of user names"),
    ('nodes = "c[1-4]"', 'nodes = "c[1-4]"\noperators = ["ro ot"]', "[defaults] operators: "
     "'ro ot' is not one of the user names"),
    ("grace_s = 5\n", 'grace_s = 5\nsignal = ["USR2"]\n', "[classes.batch] signal = ['USR2']"),
    ('classes = ["training", "batch"]', 'classes = "training"', "[queues.team-b] classes = "
     "'training': expected a list of class names"),
    ('default_class = "training"', "default_class = 1", "[queues.team-a] default_class = 1"),
    ("priority = 10\n", "priority = 10.0\n", "[classes.batch] priority = 10.0: expected an "
     "integer"),
    ('nodes = "c[1-4]"', 'nodes = "c[1-4]\\nPrologSlurmctld=/tmp/evil"',
     "[defaults] nodes = 'c[1-4]\\nPrologSlurmctld=/tmp/evil': expected a Slurm hostlist"),
    ('nodes = "c[1-4]"', 'nodes = "c[1-4] Default=YES"', "[defaults] nodes = 'c[1-4] "
     "Default=YES'"),
    ('nodes = "c[1-4]"', 'nodes = "c[4-1]"', "[defaults] nodes = 'c[4-1]'"),
    ("[queues.team-b]", '[queues."team-b\\nPrologSlurmctld=/tmp/evil"]',
     "queue (account) names are"),
    ("[classes.batch]", '[classes."batch\\n"]', "[classes.'batch\\n']: class names are"),
    ("[defaults]", "defaults = 5\n[unused]", "[defaults]: expected a table of settings"),
])
def test_wrong_types_and_injected_lines_are_refused_with_the_key(old, new, fragment):
    with pytest.raises(UserInputError) as caught:
        config_module.loads(_example_with(old, new), source="p.toml")
    assert fragment in str(caught.value) and "p.toml" in str(caught.value)


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe[defaults]\n", "not UTF-8 text (byte 0xff at offset 0)"),
    (b"x = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"[defaults]\ngpus_per_node = " + b"9" * 5000, "thousands of digits"),
    (b"[defaults\n", "not valid TOML"),
    (b"", "no [classes.<name>] defined"),
])
def test_malformed_files_are_user_errors(tmp_path, content, fragment):
    path = tmp_path / "policy.toml"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match=r".") as caught:
        config_module.load(path)
    assert fragment in str(caught.value)


def test_a_directory_a_device_or_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    outcomes: dict[str, str] = {}

    def load_each():
        for path in (tmp_path, Path("/dev/zero"), fifo, tmp_path / "missing.toml"):
            try:
                config_module.load(path)
                outcomes[str(path)] = "loaded"
            except UserInputError as error:
                outcomes[str(path)] = str(error)

    worker = threading.Thread(target=load_each, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a blocking open() of the FIFO would never return
    assert not worker.is_alive(), f"load() blocked; done so far: {outcomes}"
    assert "is not a regular file" in outcomes[str(tmp_path)]
    assert "is not a regular file" in outcomes["/dev/zero"]
    assert "is not a regular file" in outcomes[str(fifo)]
    assert "does not exist" in outcomes[str(tmp_path / "missing.toml")]


def test_a_file_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"#" * (config_module.MAX_POLICY_BYTES + 1))
    with pytest.raises(UserInputError, match="larger than 1024 KiB"):
        config_module.load(path)


def test_node_count_of_the_policy(policy):
    assert policy.node_count == 4
    assert config_module.loads(_example_with('nodes = "c[1-4]"', 'nodes = "ALL"')).node_count \
        is None


# ------------------------------------------------------------------- hostile input, properties

_VALID = EXAMPLE.read_bytes()


@st.composite
def _mutated_policy(draw) -> bytes:
    """The example policy with a few random byte edits: mostly still TOML, often of
    the wrong shape, reaching the validator rather than the TOML parser."""
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.binary(min_size=1, max_size=6) | st.sampled_from(
            [b'"', b"[", b"]", b"=", b"\n", b"5", b"true", b'"x"', b"[1]", b"{}", b"\xff"]))
        if edit == "insert":
            data[position:position] = chunk
        elif edit == "delete":
            del data[position:position + len(chunk)]
        else:
            data[position:position + len(chunk)] = chunk
    return bytes(data)


_toml_scalars = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["USR2", "USR1", "ALL", "c[1-4]", "*", "alice", "training", "reject"]))
_toml_values = st.recursive(_toml_scalars, lambda inner: st.lists(inner, max_size=4) |
                            st.dictionaries(st.text(max_size=8), inner, max_size=4),
                            max_leaves=12)
_policy_keys = st.sampled_from(["gpus_per_node", "nodes", "operators", "unmanaged_accounts",
                                "priority", "rank", "grace_s", "max_time_min", "borrow",
                                "signal", "guaranteed_gpus", "borrow_limit_gpus", "classes",
                                "users", "default_class", "default_time_min", "other"])
_policy_dicts = st.fixed_dictionaries({}, optional={
    "defaults": st.dictionaries(_policy_keys, _toml_values, max_size=5) | _toml_values,
    "classes": st.dictionaries(st.sampled_from(["training", "batch", "Bad", "x\n", ""]),
                               st.dictionaries(_policy_keys, _toml_values, max_size=6)
                               | _toml_values, max_size=3) | _toml_values,
    "queues": st.dictionaries(st.sampled_from(["team-a", "team-b", "-x", "a b"]),
                              st.dictionaries(_policy_keys, _toml_values, max_size=6)
                              | _toml_values, max_size=3) | _toml_values,
    "extra": _toml_values,
})


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | _mutated_policy())
def test_any_bytes_load_as_a_policy_or_a_user_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_bytes(content)
    try:
        loaded = config_module.load(path)
    except UserInputError as error:
        assert str(error) and "\x00" not in str(error)
        return
    assert isinstance(loaded, config_module.PolicyConfig)
    render_fragment(loaded)  # whatever loads also renders (or raises UserInputError)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_policy_dicts | _toml_values)
def test_any_parsed_toml_is_a_policy_or_a_user_error(raw):
    try:
        loaded = config_module.from_dict(raw, source="p.toml")
    except UserInputError as error:
        assert "p.toml" in str(error)
        return
    text = render_fragment(loaded)
    assert all(line.startswith(("#", "Pre", "Pri", "Job", "Par")) for line in text.splitlines())


class _SlurmLog:
    """Stands in for the shim's ``_slurm`` module: records what the policy logs."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        assert isinstance(text, str)
        text.encode("utf-8")  # the shim's "s" format needs encodable text
        self.lines.append(("info", text))

    def error(self, text: str) -> None:
        text.encode("utf-8")
        self.lines.append(("error", text))


_PROBES = [
    {"user_id": 2001, "account": None, "min_nodes": 8, "tres_per_node": "gres/gpu:8"},
    {"user_id": 2001, "account": "team-a", "min_nodes": 1, "tres_per_node": "gres/gpu:8"},
    {"user_id": 2002, "account": "team-b", "min_nodes": 4, "tres_per_node": "gres/gpu:8"},
    {"user_id": 2002, "qos": "inference"},
]


@pytest.fixture
def slurm_log(monkeypatch):
    import sys

    log = _SlurmLog()
    monkeypatch.setitem(sys.modules, "_slurm", log)
    monkeypatch.setattr(runtime_module, "FALLBACK_CHECK_S", 0.0)  # check on every call
    names = {2001: "alice", 2002: "bob"}
    monkeypatch.setattr(runtime_module.PolicyRuntime, "user_name",
                        lambda self, uid: names.get(uid, ""))
    return log


def _bump(path: Path, step: int) -> None:
    """A new version of the file even within one mtime tick."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + step * 1_000_000_000))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200) | _mutated_policy(), min_size=1, max_size=3))
def test_runtime_keeps_serving_the_previous_policy_after_any_bad_reload(tmp_path_factory,
                                                                       slurm_log, versions):
    path = tmp_path_factory.mktemp("runtime") / "policy.toml"
    path.write_bytes(_VALID)
    runtime = runtime_module.PolicyRuntime(str(path))
    expected = [runtime.job_submit(probe, probe["user_id"]) for probe in _PROBES]
    slurm_log.lines.clear()
    changes = 0
    for step, content in enumerate(versions, start=1):
        try:
            config_module.loads(content)
            continue  # a valid policy (it happens): not what this test is about
        except UserInputError:
            pass
        path.write_bytes(content)
        _bump(path, step)
        changes += 1
        for _ in range(3):  # the periodic check and the shim's notification, repeatedly
            runtime.files_changed()
            assert [runtime.job_submit(probe, probe["user_id"]) for probe in _PROBES] \
                == expected
            assert runtime.job_modify({"min_nodes": 2}, 2001)["action"] == "accept"
    errors = [text for level, text in slurm_log.lines if level == "error"]
    assert len(errors) == changes, errors  # once per version of the file, not per call
    assert all("the previous policy" in text and "keeps serving" in text for text in errors)


def test_runtime_reloads_a_fixed_file_and_logs_a_vanished_one_once(tmp_path, slurm_log):
    path = tmp_path / "policy.toml"
    path.write_bytes(_VALID)
    runtime = runtime_module.PolicyRuntime(str(path))
    path.write_bytes(_VALID.replace(b"guaranteed_gpus = 16", b"guaranteed_gpus = 8", 1))
    _bump(path, 1)
    runtime.files_changed()
    assert runtime.config.queues["team-a"].guaranteed_gpus == 8
    path.unlink()
    for _ in range(3):
        runtime.files_changed()
        runtime.job_submit(_PROBES[0], 2001)
    errors = [text for level, text in slurm_log.lines if level == "error"]
    assert len(errors) == 1 and "cannot be read" in errors[0]
    assert runtime.config.queues["team-a"].guaranteed_gpus == 8


def test_runtime_survives_a_loader_bug(tmp_path, slurm_log, monkeypatch):
    path = tmp_path / "policy.toml"
    path.write_bytes(_VALID)
    runtime = runtime_module.PolicyRuntime(str(path))

    def broken(_path):
        raise TypeError("a bug")

    monkeypatch.setattr(config_module, "load", broken)
    _bump(path, 1)
    assert runtime.job_submit(_PROBES[1], 2001)["action"] == "accept"
    runtime.files_changed()
    errors = [text for level, text in slurm_log.lines if level == "error"]
    assert len(errors) == 1 and "TypeError: a bug" in errors[0] and "slurmkit bug" in errors[0]


def test_the_first_load_still_fails_loudly(tmp_path, slurm_log):
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff")
    with pytest.raises(RuntimeError, match="not UTF-8"):
        runtime_module.PolicyRuntime(str(path))


# ------------------------------------------------------------------- what is written out

def test_render_refuses_values_that_would_add_a_line(policy):
    for bad in (dataclasses.replace(policy, nodes="c[1-4]\nPrologSlurmctld=/tmp/evil"),
                dataclasses.replace(policy, nodes="c1 Default=YES"),
                dataclasses.replace(policy, queues={"x\ny": dataclasses.replace(
                    policy.queues["team-a"], name="x\ny")})):
        with pytest.raises(UserInputError, match="refusing to write"):
            render_fragment(bad)
    # A path in the header comment is escaped, not refused: still one comment line.
    text = render_fragment(dataclasses.replace(policy, source="/etc/p\nPrologSlurmctld=/x"))
    assert text.splitlines()[0].startswith("# Managed by") and "\nPrologSlurmctld" not in text


@pytest.mark.parametrize("field, value", [
    ("policy", "/etc/slurm/job_submit.py\nFailMode=open"),
    ("python_path", "/opt/slurmkit\r"),
    ("stats_file", " /var/spool/x"),
])
def test_shim_conf_refuses_values_that_would_add_a_line(field, value):
    values = {"policy": "/etc/slurm/job_submit.py", "python_path": "/opt/slurmkit",
              "stats_file": "/var/spool/slurmctld/job_submit_python.stats", field: value}
    with pytest.raises(UserInputError, match="job_submit_python.conf"):
        render_shim_conf(fail_mode="closed", **values)


def _install_client(cluster_name: str = "skdev"):
    from slurmkit.slurm.client import SlurmClient
    from slurmkit.slurm.runner import CommandResult, RecordingRunner

    def answer(argv):
        text = (f"ClusterName = {cluster_name}\nPluginDir = /nonexistent\n"
                "StateSaveLocation = /var/spool/slurmctld\n")
        return CommandResult(argv, 0, text if argv[:2] == ("scontrol", "show") else "", "")

    return SlurmClient(RecordingRunner(answer))


def test_install_refuses_a_conf_dir_or_cluster_name_that_would_inject(tmp_path, policy):
    from slurmkit.policy.install import install_policy

    with pytest.raises(UserInputError, match="job_submit_python.conf"):
        install_policy(_install_client(), policy, EXAMPLE, tmp_path / "etc\nFailMode=open",
                       job_submit=False, dry_run=True)
    with pytest.raises(UserInputError, match="cluster name"):
        install_policy(_install_client("a,b"), policy, EXAMPLE, tmp_path, job_submit=False,
                       dry_run=True)
    report = install_policy(_install_client(), policy, EXAMPLE, tmp_path, job_submit=False,
                            dry_run=True)
    assert any("policy.conf" in line for line in report)


# ------------------------------------------------------------------- GPUs, as Slurm counts them

@pytest.mark.parametrize("text, gpus", [
    ("gres/gpu:8", 8), ("gres/gpu=8", 8), ("gres/gpu:a100:2", 2),
    ("gres/gpu", 1), ("gres/gpu:a100", 1),                      # no count: one
    ("gres/gpu:a100:2,gres/gpu:h100:3", 5), ("gres/nic:4,gres/gpu:2", 2),
    ("gres/gpu:1k", 1024), ("gres/gpu:2KiB", 2048), ("gres/gpu:0", 0),
    ("cpu:4,gres/gpu:2", 2), ("license/foo:3", 0), ("gres/gpu_x:4,gres/mps:100", 0),
    ("gres/gpu:gres:2", 2), ("gres/gpu:" + "9" * 25, 1),          # Slurm: a type, one GPU
    ("", 0), (None, 0),
    # Entries that are not GPUs never end the count of the GPU entry after them.
    ("gres/,gres/gpu:2", 2), ("license/gres,gres/gpu:2", 2), ("gres/4,gres/gpu:2", 2),
    ("gres/gpu:a:b:2", 2),                                      # the count after the last ':'
])
def test_gpu_count_reads_tres_as_slurm_does(text, gpus):
    assert gpu_count(text) == gpus


@pytest.mark.parametrize("text", ["gres/gpu:-1", "gres/gpu:+2", "gres/gpu=x", "gres/gpu:",
                                  "gres/gpu:a:b", 8, ["gres/gpu:1"],
                                  "gres/=x", "gres/:", "gres/:-1", "gres/:a:b"])
def test_gpu_count_refuses_what_it_cannot_count(text):
    from slurmkit.policy.decide import GpuRequestError

    with pytest.raises(GpuRequestError):
        gpu_count(text)


@pytest.mark.parametrize("values, gpus", [
    (dict(min_nodes=1, max_nodes=40, tres_per_node="gres/gpu:8"), 32),  # capped at 4 nodes
    (dict(min_nodes=1, max_nodes=3, tres_per_node="gres/gpu:8"), 24),
    (dict(min_nodes=1, num_tasks=16, tres_per_node="gres/gpu:8"), 32),  # -n 16, no -N max
    (dict(min_nodes=2, ntasks_per_node=8, tres_per_node="gres/gpu:8"), 16),
    (dict(min_nodes=2, tres_per_socket="gres/gpu:4", sockets_per_node=2), 16),
    (dict(min_nodes=2, tres_per_socket="gres/gpu:2"), 16),  # sockets unknown: 8 a node
    (dict(min_nodes=1, num_tasks=12, tres_per_task="gres/gpu:2"), 24),
    (dict(min_nodes=2, ntasks_per_node=4, tres_per_task="gres/gpu:1"), 8),
    (dict(min_nodes=2, num_tasks=20, ntasks_per_tres=1), 20),  # --ntasks-per-gpu
    (dict(min_nodes=None, req_nodes="c[1-3]", tres_per_node="gres/gpu:8"), 24),
    (dict(min_nodes=INFINITE32, tres_per_node="gres/gpu:8"), 32),  # NumNodes=ALL
    (dict(min_nodes=1, tres_per_node="gres/gpu"), 1),
])
def test_gpus_are_priced_at_the_worst_case(values, gpus):
    assert gpus_requested(job(**values), gpus_per_node=8, cluster_nodes=4) == gpus


@pytest.mark.parametrize("values, fragment", [
    (dict(min_nodes=1, max_nodes=40, tres_per_node="gres/gpu:16"), "asks for 64 GPUs"),
    (dict(min_nodes=5, tres_per_node="gres/gpu"), None),
    (dict(min_nodes=2, tres_per_socket="gres/gpu:4", sockets_per_node=8), "asks for 64 GPUs"),
    (dict(tres_per_node="gres/gpu:-8"), "without a sign"),
    (dict(min_nodes=-4, tres_per_node="gres/gpu:8"), "min_nodes = -4 is not a count"),
    (dict(num_tasks=40, tres_per_task="gres/gpu:1"), "asks for 40 GPUs"),
    (dict(tres_per_node="gres/gpu:1k"), "asks for 1024 GPUs"),
])
def test_gpu_bypasses_are_refused(policy, values, fragment):
    decision = decide(policy, job(qos="batch", **values), 2001)  # batch: 16 + 16 borrowed
    if fragment is None:
        assert decision.action == "accept" and decision.gpus == 5
    else:
        assert decision.action == "reject" and fragment in decision.message, decision


def test_gpus_of_a_job_across_its_node_range_are_refused_over_the_cap(policy):
    decision = decide(policy, job(qos="batch", min_nodes=1, max_nodes=3,
                                  tres_per_node="gres/gpu:16"), 2001)
    assert decision.action == "reject" and "asks for 48 GPUs" in decision.message


@pytest.mark.parametrize("update, action, fragment", [
    ({"min_nodes": 40, "max_nodes": 40}, "reject", "up to 320 GPUs"),
    ({"min_nodes": 5, "max_nodes": 5, "tres_per_node": "gres/gpu:8"}, "reject", "up to 40"),
    ({"tres_per_node": "gres/gpu:4"}, "reject", "up to 64"),   # x all 16 nodes: unknown
    ({"tres_per_node": "gres/gpu:16"}, "reject", "up to 128"),  # a node holds at most 8
    ({"tres_per_job": "gres/gpu:64"}, "reject", "up to 64"),
    ({"tres_per_socket": "gres/gpu:2", "sockets_per_node": 2}, "reject", "up to 64"),
    ({"num_tasks": 64}, "reject", "give the whole shape"),
    ({"num_tasks": 64, "tres_per_task": "gres/gpu:0"}, "accept", None),
    ({"min_nodes": 3, "max_nodes": 3}, "accept", None),  # a shrink, docs/slurm-notes.md
    ({"min_nodes": 2, "max_nodes": 2, "tres_per_node": "gres/gpu:8"}, "accept", None),
    ({"tres_per_job": "gres/gpu:32"}, "accept", None),
    ({"tres_per_node": "gres/gpu:-1"}, "reject", "without a sign"),
    ({"time_limit": 30}, "accept", None),
    ({"priority": INFINITE32}, "accept", None),                # scontrol release
    ({"priority": 0}, "accept", None),                         # scontrol hold
    ({"priority": 5}, "reject", "only operators"),
    ({"nice": 0}, "accept", None),                             # not a raise
    ({"nice": 100}, "accept", None),
    ({"nice": -1}, "reject", "a negative nice raises priority"),
])
def test_modify_reprices_what_the_update_sets(update, action, fragment):
    """On 16 nodes of 8 GPUs, alice's queue may use 32: an update is priced with what it
    leaves out (the job's nodes, its GPUs per node) at the worst."""
    config = config_module.loads(_example_with('nodes = "c[1-4]"', 'nodes = "c[1-16]"'))
    decision = decide_modify(config, {"user": "alice", **update}, 2001)
    assert decision.action == action, decision
    if fragment:
        assert fragment in decision.message


def test_modify_by_operators_and_users_outside_the_queues(policy):
    assert decide_modify(policy, {"user": "root", "min_nodes": 400}, 0).action == "accept"
    assert decide_modify(policy, {"user": "mallory", "min_nodes": 2}, 2009).action == "reject"
    assert decide_modify(policy, {"user": "mallory", "time_limit": 5}, 2009).action == "accept"


def test_modify_without_a_node_bound_is_refused_when_nodes_are_all():
    config = config_module.loads(_example_with('nodes = "c[1-4]"', 'nodes = "ALL"'))
    decision = decide_modify(config, {"user": "alice", "tres_per_node": "gres/gpu:1"}, 2001)
    assert decision.action == "reject" and "give NumNodes=" in decision.message
    assert decide_modify(config, {"user": "alice", "min_nodes": 2, "max_nodes": 2,
                                  "tres_per_node": "gres/gpu:8"}, 2001).action == "accept"


def test_accounts_are_matched_as_slurm_stores_them(policy):
    decision = decide(policy, job(account="TEAM-A", tres_per_node="gres/gpu:8"), 2001)
    assert decision.action == "accept" and decision.queue == "team-a"


def test_unmanaged_accounts_may_not_use_the_policy_partitions():
    config = config_module.loads(_example_with("[defaults]\n",
                                               '[defaults]\nunmanaged_accounts = "allow"\n'))
    free = decide(config, job(account="physics", partition="debug"), 2001)
    assert free.action == "accept" and free.changes == {}
    for partition in ("borrow-training", "guar-team-a", "debug,borrow-batch"):
        decision = decide(config, job(account="physics", partition=partition,
                                      tres_per_node="gres/gpu:64"), 2001)
        assert decision.action == "reject" and "belong to the GPU queues" in decision.message


def test_messages_reach_the_shim_as_encodable_text(policy):
    decision = decide(policy, job(partition="\udcff\udcfe"), 2001)  # undecodable -p bytes
    assert decision.action == "reject"
    decision.to_dict()["message"].encode("utf-8")


# ------------------------------------------------------------------- fuzz against an oracle
#
# decide() turns any exception into a rejection, so a fuzz through it cannot see a
# crash. These call _decide (an exception fails the test) and compare every decision
# with an oracle: the rules of docs/policy.md restated plainly, with the GPU count
# taken from how the job was generated (not by parsing its TRES text).

_ALLOWING = config_module.loads(_example_with(
    "[defaults]\n", '[defaults]\nunmanaged_accounts = "allow"\n').replace(
    "default_time_min = 60", "default_time_min = 60\nborrow = false").replace(
    'nodes = "c[1-4]"', 'nodes = "ALL"'))
_CONFIGS = [config_module.load(EXAMPLE), _ALLOWING]
_TYPES = ["a100", "h100", "tesla"]
_DECOYS = ["gres/nic:2", "gres/gpu_x:3", "license/foo:2", "cpu:4", "gres/mps:100",
           "gres/shard:2"]


def _tres(rng):
    """(TRES text, GPUs it names): GPU entries in every spelling Slurm accepts, mixed
    with other TRES. Mostly empty (a job rarely sets every field)."""
    parts, gpus = [], 0
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        kind = rng.choice(["count", "equals", "typed", "bare", "type-only", "kilo", "decoy"])
        count, gpu_type = rng.randint(0, 16), rng.choice(_TYPES)
        if kind == "decoy":
            parts.append(rng.choice(_DECOYS))
            continue
        text, value = {
            "count": (f"gres/gpu:{count}", count), "equals": (f"gres/gpu={count}", count),
            "typed": (f"gres/gpu:{gpu_type}:{count}", count), "bare": ("gres/gpu", 1),
            "type-only": (f"gres/gpu:{gpu_type}", 1), "kilo": (f"gres/gpu:{count}k",
                                                                count * 1024),
        }[kind]
        parts.append(text)
        gpus += value
    if not parts:
        return rng.choice([None, ""]), 0
    return ",".join(parts), gpus


def _odd_text(rng):
    if rng.random() < 0.5:
        return rng.choice(["TEAM-A", " team-b ", "physics", "urgent", "main", "debug", "",
                           " ", "guar-team-a ,borrow-training", "team-a\n", "\udcff"])
    alphabet = "abct-_ ,AZ\n\u00e9\U0001f600\udcff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))


def _shim_job(rng):
    """A job dict as the shim builds it (strings or None; unsigned numbers or None,
    nice signed), with the GPUs of each TRES field. Each field takes a common value nine
    times in ten, else a rare one: most jobs reach the GPU pricing, some probe the
    early refusals."""
    def mostly(common, rare):
        return rng.choice(common) if rng.random() < 0.9 else rare()

    job_desc = {
        "user": mostly(["alice", "alice", "bob", "carol"],
                       lambda: rng.choice(["root", "slurm", "mallory", "", _odd_text(rng)])),
        "account": mostly([None, None, "team-a", "team-b"], lambda: _odd_text(rng)),
        "qos": mostly([None, None, "training", "batch", "inference"], lambda: _odd_text(rng)),
        "partition": mostly([None, None, None, "guar-team-a", "borrow-training",
                             "guar-team-a,borrow-training", "guar-team-b,borrow-batch"],
                            lambda: _odd_text(rng)),
        "min_nodes": mostly([None, 1, 1, 2, 3, 4], lambda: rng.choice([rng.randint(0, 50),
                                                                       INFINITE32])),
        "max_nodes": mostly([None, None, None, 0], lambda: rng.randint(1, 50)),
        "num_tasks": mostly([None, None, 1, 2, 8], lambda: rng.randint(1, 80)),
        "ntasks_per_node": mostly([None, None, 1, 4, 8], lambda: rng.randint(0, 50)),
        "ntasks_per_tres": mostly([None], lambda: rng.randint(0, 50)),
        "sockets_per_node": mostly([None, None, 2], lambda: rng.randint(1, 4)),
        "req_nodes": mostly([None], lambda: rng.choice(["c1", "c[1-3]", "c[1-2],c4"])),
        "time_limit": mostly([None, None, 30, 600], lambda: rng.randint(0, 10 ** 6)),
        "priority": mostly([None, None, 0], lambda: rng.choice([1, 100, INFINITE32])),
        "nice": mostly([None, None, 0, 10], lambda: rng.randint(-100, 100)),
        "requeue": rng.choice([None, 0, 1]),
        "warn_signal": rng.choice([None, 0, 10, 12]),
    }
    truth = {}
    for key in ("tres_per_job", "tres_per_node", "tres_per_socket", "tres_per_task"):
        job_desc[key], truth[key] = _tres(rng)
    return job_desc, truth


def _oracle_gpus(config, job_desc, truth) -> int:
    """The most GPUs Slurm may allocate, restated: nodes = the maximum when given (else
    an explicit task count, else the minimum, which defaults to the node list's size or
    1), at most the cluster; tasks = the task count or nodes x tasks per node (or per
    GPU); then the largest of per job, per node, per socket, per task and derived."""
    def everything(value):
        return config.node_count if value == INFINITE32 and config.node_count else value

    sizes = {"c1": 1, "c[1-3]": 3, "c[1-2],c4": 3}
    low = everything(job_desc["min_nodes"]) if job_desc["min_nodes"] else \
        sizes.get(job_desc["req_nodes"], 1)
    high = everything(job_desc["max_nodes"]) or job_desc["num_tasks"] or low
    high = max(low, high)
    if config.node_count:
        high = max(low, min(high, config.node_count))
    tasks = job_desc["num_tasks"] or high * max(job_desc["ntasks_per_node"] or 1,
                                                job_desc["ntasks_per_tres"] or 1)
    if job_desc["sockets_per_node"]:
        per_node_from_sockets = truth["tres_per_socket"] * job_desc["sockets_per_node"]
    else:
        per_node_from_sockets = max(truth["tres_per_socket"], config.gpus_per_node) \
            if truth["tres_per_socket"] else 0
    candidates = [truth["tres_per_job"], truth["tres_per_node"] * high,
                  per_node_from_sockets * high, truth["tres_per_task"] * tasks]
    if job_desc["ntasks_per_tres"] and not any(truth.values()):
        candidates.append(-(-tasks // job_desc["ntasks_per_tres"]))
    return max(candidates)


def _oracle(config, job_desc, truth, uid):
    """(action, changes or None, a fragment of the message or None, GPUs or None)."""
    def text(value):
        return str(value).strip() or None if value is not None else None

    user = job_desc["user"] or ""
    if uid == 0 or user in config.operators:
        return "accept", {}, None, 0
    if not user:
        return "reject", None, "cannot tell who submitted", None
    account = text(job_desc["account"])
    account = account.lower() if account else None
    requested = [p.strip() for p in (text(job_desc["partition"]) or "").split(",") if p.strip()]
    users_queues = [q for q in config.queues.values() if "*" in q.users or user in q.users]
    if account is None:
        if not users_queues:
            return "reject", None, "is not in any queue", None
        queue = users_queues[0]
    elif account in config.queues:
        queue = config.queues[account]
    elif config.unmanaged_accounts == "allow":
        if set(requested) & set(config.partitions):
            return "reject", None, "belong to the GPU queues", None
        return "accept", {}, None, 0
    else:
        return "reject", None, "is not a queue of this cluster", None
    if user not in queue.users and "*" not in queue.users:
        return "reject", None, f"may not submit to queue {queue.name}", None
    class_name = text(job_desc["qos"]) or queue.default_class
    if class_name not in config.classes:
        return "reject", None, "is not a workload class", None
    if class_name not in queue.classes:
        return "reject", None, f"does not run {class_name} jobs", None
    job_class = config.classes[class_name]
    if job_desc["priority"] not in (None, 0):
        return "reject", None, "only operators may set --priority", None
    if job_desc["nice"] is not None and job_desc["nice"] < 0:
        return "reject", None, "negative --nice", None
    gpus = _oracle_gpus(config, job_desc, truth)
    cap = queue.guaranteed_gpus + (queue.borrow_limit_gpus if job_class.borrow else 0)
    if gpus > cap:
        return "reject", None, f"asks for {gpus} GPUs", gpus
    allowed = [queue.partition] if gpus <= queue.guaranteed_gpus else []
    if job_class.borrow and queue.borrow_limit_gpus > 0:
        allowed.append(job_class.borrow_partition)
    if requested and not set(requested) <= set(allowed):
        return "reject", None, "are not open to", gpus
    partitions = requested or allowed
    limit = job_desc["time_limit"]
    if limit is not None and job_class.max_time_min and limit > job_class.max_time_min:
        return "reject", None, f"exceeds the {class_name} class maximum", gpus
    changes = {"partition": ",".join(partitions), "qos": class_name}
    if account is None:
        changes["account"] = queue.name
    if limit is None and job_class.default_time_min:
        changes["time_limit"] = job_class.default_time_min
    if job_class.borrow_partition in partitions:
        changes["requeue"] = 1
        if not job_desc["warn_signal"]:
            changes.update(warn_signal=config_module.WARNING_SIGNALS[job_class.signal],
                           warn_time=max(job_class.grace_s, 1), warn_flags=0)
    return "accept", changes, None, gpus


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=True))
def test_ten_thousand_generated_jobs_get_the_oracle_s_decision(rng):
    # The job is built from one seeded Random (hypothesis reports the seed of a
    # failure): drawing each of its ~25 fields through hypothesis cost 5 ms a job.
    config = rng.choice(_CONFIGS)
    job_desc, truth = _shim_job(rng)
    uid = rng.choice([0, 2001, 2002, 2003, 64030, 99999])
    decision = _decide(config, job_desc, uid)  # not decide(): an exception fails here
    action, changes, fragment, gpus = _oracle(config, job_desc, truth, uid)
    assert decision.action == action, (job_desc, uid, decision, action, fragment)
    if action == "accept":
        assert decision.changes == changes
        assert decision.gpus == gpus
    else:
        assert fragment in decision.message and not decision.changes
    assert json.loads(json.dumps(decision.to_dict())) == decision.to_dict()
    for key, value in decision.changes.items():
        assert key in SETTABLE_FIELDS and isinstance(value, SETTABLE_FIELDS[key])


_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                  st.binary(max_size=5), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.sampled_from(["gres/gpu", "gres/gpu:-3", "gres/gpu:8", "c[1-99999]",
                                   "c[", "team-a", "borrow-training", "\udcff"]))
_junk_jobs = st.dictionaries(st.sampled_from(
    ["user", "account", "qos", "partition", "min_nodes", "max_nodes", "num_tasks",
     "ntasks_per_node", "ntasks_per_tres", "sockets_per_node", "req_nodes", "tres_per_job",
     "tres_per_node", "tres_per_socket", "tres_per_task", "time_limit", "priority", "nice",
     "requeue", "warn_signal", "unexpected"]), _junk, max_size=12).map(
    lambda d: {"user": "alice", **d} if "user" not in d else d)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_CONFIGS), _junk_jobs, st.sampled_from([0, 2001, 99999]))
def test_any_values_of_any_type_give_a_decision_without_an_exception(config, job_desc, uid):
    for decision in (_decide(config, job_desc, uid), _decide_modify(config, job_desc, uid)):
        assert isinstance(decision, Decision) and decision.action in ("accept", "reject")
        shipped = decision.to_dict()
        json.dumps(shipped)
        shipped["message"].encode("utf-8")
        if decision.action == "reject":
            assert decision.message and not decision.changes
        for key, value in decision.changes.items():
            assert key in SETTABLE_FIELDS and isinstance(value, SETTABLE_FIELDS[key])


# ------------------------------------------------------------- updates priced exactly

_16_NODES = dict(gpus_per_node=8, cluster_nodes=16)


@pytest.mark.parametrize("update, gpus", [
    ({"time_limit": 30}, None),                       # no GPU field: not priced
    ({"tres_per_node": ""}, None),                    # an empty value sets nothing
    ({"min_nodes": 2}, 16),                           # 2 nodes x 8 (a node's GPUs)
    ({"max_nodes": 3}, 24),
    ({"req_nodes": "c[1-5]"}, 40),
    ({"min_nodes": INFINITE32}, 128),                 # NumNodes=ALL: the policy's 16 nodes
    ({"tres_per_job": "gres/gpu:12"}, 12),
    ({"tres_per_node": "gres/gpu:2"}, 32),            # x all 16 nodes
    ({"tres_per_node": "gres/gpu:0"}, 0),
    ({"sockets_per_node": 2}, 128),                   # 8 per socket (a node's) x 2 x 16
    ({"tres_per_socket": "gres/gpu:1", "sockets_per_node": 2}, 32),  # 1 x 2 x 16 nodes
    ({"tres_per_socket": "gres/gpu:1"}, 128),         # sockets unknown: a node's 8
    ({"tres_per_socket": "gres/gpu:1", "sockets_per_node": 2, "min_nodes": 3}, 24),
    ({"num_tasks": 4, "tres_per_task": "gres/gpu:1"}, 4),
    ({"num_tasks": 4, "tres_per_task": "gres/gpu:0"}, 0),
    ({"tres_per_task": "gres/gpu:0", "num_tasks": 6, "ntasks_per_tres": 2}, 6),
    ({"num_tasks": 3}, 24),                           # 8 per task (at most a node's) x 3
    ({"tres_per_task": "gres/gpu:2"}, 128),           # tasks unknown: every GPU
    ({"ntasks_per_node": 4}, 128),
    ({"ntasks_per_tres": 2}, 128),
])
def test_gpus_after_an_update_by_hand(update, gpus):
    from slurmkit.policy.decide import gpus_after_update

    assert gpus_after_update(update, **_16_NODES) == gpus


@pytest.mark.parametrize("update, gpus", [
    ({"tres_per_node": "gres/gpu:0"}, 0),
    ({"tres_per_task": "gres/gpu:0"}, 0),
    ({"tres_per_socket": "gres/gpu:0", "sockets_per_node": 2}, 0),
])
def test_gpus_after_an_update_of_zero_gpus_without_a_node_count(update, gpus):
    """No node count in the policy and none in the update: zero GPUs is still zero."""
    from slurmkit.policy.decide import gpus_after_update

    assert gpus_after_update(update, gpus_per_node=8, cluster_nodes=None) == gpus


@pytest.mark.parametrize("field", ["tres_per_job", "tres_per_node", "tres_per_socket",
                                   "tres_per_task"])
def test_an_update_that_cannot_be_priced_names_its_field(field):
    from slurmkit.policy.decide import GpuRequestError, gpus_after_update

    with pytest.raises(GpuRequestError) as raised:
        gpus_after_update({field: "gres/gpu:-1", "sockets_per_node": 1, "num_tasks": 1},
                          **_16_NODES)
    assert str(raised.value).startswith(f"{field} = 'gres/gpu:-1': a count must be")
    with pytest.raises(GpuRequestError) as raised:
        gpus_after_update({"num_tasks": -2}, **_16_NODES)
    assert str(raised.value).startswith("num_tasks = -2 is not a count")


def test_an_unbounded_update_says_to_give_the_node_count():
    from slurmkit.policy.decide import GpuRequestError, gpus_after_update

    with pytest.raises(GpuRequestError) as raised:
        gpus_after_update({"tres_per_node": "gres/gpu:1"}, gpus_per_node=8, cluster_nodes=None)
    assert str(raised.value) == ("the job's size after this update cannot be bounded (job "
                                 "updates do not show the job); give NumNodes= in the same "
                                 "update")


def test_uid_0_is_an_operator_whatever_its_name(policy):
    assert decide(policy, job(user="nobody-here", tres_per_node="gres/gpu:999"), 0) \
        == Decision("accept")
    assert decide_modify(policy, {"user": "nobody-here", "min_nodes": 400}, 0) \
        == Decision("accept")
    assert decide_modify(policy, {"user": "nobody-here", "min_nodes": 400}, 2001).action \
        == "reject"
    decision = decide_modify(policy, {"user": "alice", "priority": 5}, 2001)
    assert decision.message == "only operators may change a job's priority"


class _Exploding(dict):
    def get(self, key, default=None):
        raise RuntimeError(f"no {key}")


def test_a_failure_inside_the_policy_is_a_rejection_that_says_so(policy):
    assert decide(policy, _Exploding(), 2001) == Decision(
        "reject", "slurmkit policy could not evaluate this job (RuntimeError: no user); please "
        "report it to the cluster admins")
    assert decide_modify(policy, _Exploding(), 2001) == Decision(
        "reject", "slurmkit policy could not evaluate this update (RuntimeError: no user)")


def _no_borrowing_for_team_b(allow_unmanaged: bool = False):
    """16 nodes; training and batch never borrow, so team-b (bob) is capped at its 16
    guaranteed GPUs while team-a (alice) may borrow for inference (32)."""
    text = _example_with('nodes = "c[1-4]"', 'nodes = "c[1-16]"')
    text = text.replace("priority = 100\n", "priority = 100\nborrow = false\n", 1)
    text = text.replace("priority = 10\n", "priority = 10\nborrow = false\n", 1)
    if allow_unmanaged:
        text = text.replace("[defaults]\n", '[defaults]\nunmanaged_accounts = "allow"\n', 1)
    return config_module.loads(text)


def test_updates_get_exactly_these_decisions():
    config = _no_borrowing_for_team_b()
    node_shape = {"min_nodes": 2, "max_nodes": 2, "tres_per_node": "gres/gpu:8"}
    assert decide_modify(config, {"user": "bob", **node_shape}, 2002) == Decision(
        "accept", gpus=16)
    assert decide_modify(config, {"user": "alice", "time_limit": 30}, 2001) == Decision("accept")
    assert decide_modify(config, {"user": "bob", "min_nodes": 3, "max_nodes": 3,
                                  "tres_per_node": "gres/gpu:6"}, 2002) == Decision(
        "reject", "after this update the job could use up to 18 GPUs; your queues allow at "
        "most 16. Job updates do not show the job itself, so what the update leaves out is "
        "priced at its worst: give the whole shape in one update (e.g. NumNodes=2 "
        "TresPerNode=gres/gpu:8), or cancel and resubmit", gpus=18)
    assert decide_modify(config, {"user": "alice", "min_nodes": 3, "max_nodes": 3,
                                  "tres_per_node": "gres/gpu:6"}, 2001) == Decision(
        "accept", gpus=18)  # inference borrows: 16 + 16
    assert decide_modify(config, {"user": "mallory", "min_nodes": 2}, 2009) == Decision(
        "reject", "user mallory is not in any queue of this cluster: GPU-related changes are "
        "refused", gpus=16)
    assert decide_modify(_no_borrowing_for_team_b(allow_unmanaged=True),
                         {"user": "mallory", "min_nodes": 2}, 2009) == Decision("accept", gpus=16)
    for key in ("partition", "qos", "account"):
        assert decide_modify(config, {"user": "alice", key: "x"}, 2001) == Decision(
            "reject", f"the policy sets {key}; cancel and resubmit with other -A/--qos "
            "instead of changing it")
    assert decide_modify(config, {"user": "alice", "nice": -5}, 2001) == Decision(
        "reject", "a negative nice raises priority: only operators may use it")


def test_a_node_list_is_read_up_to_64_kib():
    one_node = {"tres_per_node": "gres/gpu:1"}
    assert gpus_requested({"req_nodes": "a" * 65536, **one_node}) == 1
    from slurmkit.policy.decide import GpuRequestError

    with pytest.raises(GpuRequestError) as raised:
        gpus_requested({"req_nodes": "a" * 65537, **one_node})
    message = str(raised.value)  # the value shortened, as every quoted value is
    assert message.startswith("req_nodes = 'aaa") and message.endswith("' is not a node list")
    assert len(message) < 200
    with pytest.raises(GpuRequestError) as raised:
        gpus_requested({"req_nodes": 5, **one_node})
    assert str(raised.value) == "req_nodes = 5 is not a node list"


_TO_FIX = "(submit with -A QUEUE)"


@pytest.mark.parametrize("values, message, details", [
    (dict(user="bob", account="team-a"),
     "user bob may not submit to queue team-a; your queues: team-b", dict(queue="team-a")),
    (dict(qos="urgent"), "QOS 'urgent' is not a workload class; use --qos with one of "
     "inference, training, batch", dict(queue="team-a")),
    (dict(user="bob", qos="inference"), "queue team-b does not run inference jobs; use --qos "
     "with one of training, batch", dict(queue="team-b")),
    (dict(account="physics"), f"account 'physics' is not a queue of this cluster; your queues: "
     f"team-a {_TO_FIX}", {}),
    (dict(user="mallory", account="physics"), "account 'physics' is not a queue of this "
     f"cluster; your queues: none {_TO_FIX}", {}),
    (dict(user="mallory"), "user mallory is not in any queue of this cluster; ask the admins "
     "to add you to one", {}),
    (dict(user=""), "cannot tell who submitted this job (unknown uid); ask the admins", {}),
    (dict(priority=99999), "only operators may set --priority; the workload class sets it "
     "(--qos training)", dict(queue="team-a", job_class="training")),
    (dict(nice=-5), "a negative --nice raises priority: only operators may use it",
     dict(queue="team-a", job_class="training")),
    (dict(partition="main"), "partition(s) main are not open to training jobs of queue team-a; "
     "allowed: guar-team-a, borrow-training (or leave -p out: the policy chooses)",
     dict(queue="team-a", job_class="training")),
    (dict(qos="inference", time_limit=100000), "time limit 100000 min exceeds the inference "
     "class maximum of 1440 min (-t)", dict(queue="team-a", job_class="inference",
                                            may_borrow=True)),
    (dict(min_nodes=5, tres_per_node="gres/gpu:8"), "the job asks for 40 GPUs; queue team-a may "
     "use at most 16 guaranteed + 16 borrowed for training jobs",
     dict(queue="team-a", job_class="training", gpus=40)),
    (dict(tres_per_node="gres/gpu:-1"), "cannot count the GPUs this job asks for: tres_per_node "
     "= 'gres/gpu:-1': a count must be a whole number of at least 0, without a sign",
     dict(queue="team-a", job_class="training")),
])
def test_rejections_are_exactly_these(policy, values, message, details):
    assert decide(policy, job(**values), 2001) == Decision("reject", message, **details)


def test_acceptances_are_exactly_these(policy):
    assert decide(policy, job(qos="inference", tres_per_node="gres/gpu:8", requeue=0), 2001) \
        == Decision("accept", "--no-requeue ignored: borrowed capacity is reclaimed by requeue",
                    {"partition": "guar-team-a,borrow-inference", "qos": "inference",
                     "account": "team-a", "requeue": 1, "warn_signal": 12, "warn_time": 15,
                     "warn_flags": 0}, "team-a", "inference", 8, True)
    # The job's own warning signal stands; the account it gave is not changed.
    assert decide(policy, job(user="bob", account="TEAM-B", qos="batch", min_nodes=3,
                              tres_per_node="gres/gpu:8", warn_signal=10), 2002) \
        == Decision("accept", "", {"partition": "borrow-batch", "qos": "batch",
                                   "time_limit": 60, "requeue": 1}, "team-b", "batch", 24, True)
    assert decide(policy, job(partition="guar-team-a", time_limit=30), 2001) == Decision(
        "accept", "", {"partition": "guar-team-a", "qos": "training", "account": "team-a"},
        "team-a", "training", 0, False)
    config = _no_borrowing_for_team_b()
    assert decide(config, job(user="bob", min_nodes=2, tres_per_node="gres/gpu:8"), 2002) \
        == Decision("accept", "", {"partition": "guar-team-b", "qos": "training",
                                   "account": "team-b"}, "team-b", "training", 16, False)
    assert decide(config, job(user="bob", min_nodes=3, tres_per_node="gres/gpu:8"), 2002) \
        == Decision("reject", "the job asks for 24 GPUs; queue team-b may use at most 16 "
                    "guaranteed for training jobs", queue="team-b", job_class="training",
                    gpus=24)


def test_counts_as_slurm_reads_them_at_the_edges():
    # strtoull saturates at 2^64-1: Slurm then reads the token as a GRES type, one of it.
    assert gpu_count("gres/gpu:18446744073709551615") == 1
    assert gpu_count("gres/gpu:18446744073709551614") == 18446744073709551614
    assert gpu_count("gres/gpu:4x") == 1  # not a size suffix: a type named 4x
    from slurmkit.policy.decide import GpuRequestError

    with pytest.raises(GpuRequestError) as raised:
        gpus_requested({"req_nodes": "c[", "tres_per_node": "gres/gpu:1"})
    assert str(raised.value) == "req_nodes = 'c[' is not a node list (unbalanced brackets)"


def test_a_decision_reaches_the_shim_as_this_dict():
    assert Decision("reject", "bad \udcff", {"qos": "a"}, "q", "c", 3, True).to_dict() == {
        "action": "reject", "message": "bad \\udcff", "changes": {"qos": "a"}, "queue": "q",
        "job_class": "c", "gpus": 3, "may_borrow": True}


def _three_queues(extra: str = "") -> "config_module.PolicyConfig":
    return config_module.loads(EXAMPLE.read_text() + (
        '\n[queues.team-c]\nguaranteed_gpus = 8\nclasses = ["batch"]\nusers = ["dave"]\n'
        + extra))


def test_rejections_list_every_queue_the_user_has():
    config = _three_queues()
    assert decide(config, job(user="carol", account="physics"), 2003).message == (
        "account 'physics' is not a queue of this cluster; your queues: team-a, team-b "
        "(submit with -A QUEUE)")
    assert decide(config, job(user="carol", account="team-c"), 2003).message == (
        "user carol may not submit to queue team-c; your queues: team-a, team-b")
    assert decide(config, job(user="mallory", account="team-a"), 2009).message == (
        "user mallory may not submit to queue team-a; your queues: none")
    assert decide(config, job(partition="main,debug"), 2001).message == (
        "partition(s) main, debug are not open to training jobs of queue team-a; allowed: "
        "guar-team-a, borrow-training (or leave -p out: the policy chooses)")


def test_unmanaged_accounts_are_told_which_partitions_are_the_policys(policy):
    config = config_module.loads(_example_with("[defaults]\n",
                                               '[defaults]\nunmanaged_accounts = "allow"\n'))
    assert decide(config, job(account="physics", partition="guar-team-a,borrow-batch,debug"),
                  2001) == Decision(
        "reject", "partition(s) guar-team-a, borrow-batch belong to the GPU queues; account "
        "'physics' is not a queue (submit with -A QUEUE, or to another partition)")


@pytest.mark.parametrize("borrow_limit, partitions", [(0, "guar-team-c"),
                                                      (1, "guar-team-c,borrow-batch")])
def test_a_queue_borrows_only_with_a_borrow_limit(borrow_limit, partitions):
    config = _three_queues(f"borrow_limit_gpus = {borrow_limit}\n")
    decision = decide(config, job(user="dave", qos="batch"), 2004)
    assert decision.changes["partition"] == partitions


def test_a_time_limit_of_exactly_the_class_maximum_is_accepted(policy):
    assert decide(policy, job(qos="inference", time_limit=1440), 2001).action == "accept"
    assert decide(policy, job(qos="inference", time_limit=1441), 2001).action == "reject"
