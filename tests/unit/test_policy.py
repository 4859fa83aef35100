"""The job-submit policy: configuration, decisions, Slurm shape, simulation."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurmkit.errors import UserInputError
from slurmkit.policy import config as config_module
from slurmkit.policy.decide import SETTABLE_FIELDS, decide, decide_modify, gpus_requested
from slurmkit.policy.simulate import job_desc_from_description, simulate
from slurmkit.policy.slurmconf import render_fragment, sacctmgr_plan

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


# ------------------------------------------------------------------- fuzz

_text = st.one_of(st.none(), st.text(max_size=20),
                  st.sampled_from(["team-a", "team-b", "inference", "training", "batch",
                                   "guar-team-a", "borrow-training,guar-team-a", "main", ""]))
_number = st.one_of(st.none(), st.integers(min_value=-(2 ** 40), max_value=2 ** 40),
                    st.sampled_from([0, 1, 4294967294, 65534]))
_tres = st.one_of(st.none(), st.text(max_size=30),
                  st.builds(lambda n, name: f"gres/gpu{name}:{n}",
                            st.integers(min_value=0, max_value=100000),
                            st.sampled_from(["", ":a100", ":h100"])))
_jobs = st.fixed_dictionaries({
    "user": st.one_of(st.sampled_from(["alice", "bob", "carol", "root", "mallory", ""]),
                      st.text(max_size=10), st.none()),
    "account": _text, "qos": _text, "partition": _text,
    "min_nodes": _number, "num_tasks": _number, "ntasks_per_node": _number,
    "tres_per_node": _tres, "tres_per_job": _tres, "tres_per_task": _tres,
    "time_limit": _number, "priority": _number, "nice": _number, "requeue": _number,
    "warn_signal": _number,
}, optional={"unexpected": st.text(max_size=5), "user_id": _number})


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_jobs, st.sampled_from([0, 2001, 2002, 2003, 64030, 99999]))
def test_ten_thousand_generated_jobs_always_get_a_valid_decision(policy, job_desc, uid):
    decision = decide(policy, job_desc, uid)
    assert decision.action in ("accept", "reject")
    assert isinstance(decision.message, str)
    if decision.action == "reject":
        assert decision.message and not decision.changes
    for key, value in decision.changes.items():
        assert key in SETTABLE_FIELDS and isinstance(value, SETTABLE_FIELDS[key])
    if "partition" in decision.changes:
        assert set(decision.changes["partition"].split(",")) <= set(policy.partitions)
    json.dumps(decision.to_dict())  # what the shim receives is plain data
