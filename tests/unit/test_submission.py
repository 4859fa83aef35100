import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.slurm import hostlist
from slurmkit.slurm.models import Node
from slurmkit.spec import build_spec
from slurmkit.submission import ClusterView, choose_placement
from slurmkit.topology.model import parse_topology

TOPOLOGY = parse_topology("SwitchName=leaf1 Nodes=c[1-2]\nSwitchName=leaf2 Nodes=c[3-4]\n"
                          "SwitchName=spine Switches=leaf[1-2]\n")


def node(name, states=("IDLE",), alloc_cpus=0, gpus_used=0, partitions=("main",)):
    return Node(name=name, address=name, states=frozenset(states), cpus=2,
                alloc_cpus=alloc_cpus, real_memory_mb=2000, alloc_memory_mb=0, gpus=8,
                gpus_used=gpus_used, partitions=partitions)


def view(*nodes, unhealthy=()):
    return ClusterView(TOPOLOGY, list(nodes), unhealthy=frozenset(unhealthy))


ALL_IDLE = [node(f"c{i}") for i in range(1, 5)]


def spec(**values):
    return build_spec({"command": ["x"], "exclusive": True, **values})


def test_pins_a_compact_placement_when_nodes_are_free():
    options, decision = choose_placement(spec(nodes=2), view(*ALL_IDLE))
    assert options.nodelist in ("c[1-2]", "c[3-4]") and options.switches is None


def test_busy_nodes_are_not_free_for_exclusive_jobs():
    busy_c1 = [node("c1", ("MIXED",), alloc_cpus=1), *ALL_IDLE[1:]]
    options, _ = choose_placement(spec(nodes=2), view(*busy_c1))
    assert options.nodelist == "c[3-4]"


def test_shared_jobs_fit_beside_others():
    half_busy = [node("c1", ("MIXED",), alloc_cpus=1, gpus_used=4), *ALL_IDLE[1:]]
    options, _ = choose_placement(spec(nodes=1, exclusive=False, gpus_per_node=4),
                                  view(half_busy[0]))
    assert options.nodelist == "c1"


def test_elastic_jobs_take_the_most_nodes_available_down_to_min():
    down = [node("c1", ("DOWN", "NOT_RESPONDING")), *ALL_IDLE[1:]]
    options, decision = choose_placement(spec(nodes="2-4", kind="training"), view(*down))
    assert options.nodelist == "c[2-4]" and len(decision.nodes) == 3


def test_not_enough_free_nodes_asks_slurm_for_few_switches_and_waits():
    busy = [node(f"c{i}", ("ALLOCATED",), alloc_cpus=2) for i in range(1, 4)] + [ALL_IDLE[3]]
    options, decision = choose_placement(spec(nodes=2, switches_wait_min=90), view(*busy))
    assert options.nodelist is None and options.switches == "1@01:30:00"


def test_unhealthy_nodes_are_excluded_and_avoided():
    options, _ = choose_placement(spec(nodes=2), view(*ALL_IDLE, unhealthy=["c1"]))
    assert options.nodelist == "c[3-4]" and options.exclude == "c1"


def test_partition_filter_and_placement_none():
    other = [node("c1", partitions=("other",)), *ALL_IDLE[1:]]
    options, _ = choose_placement(spec(nodes=2, partition="main"), view(*other))
    assert options.nodelist == "c[3-4]"
    assert choose_placement(spec(nodes=2, placement="none"), view(*ALL_IDLE)) == (None, None)


# ----------------------------------------------------------------- node health


def crashed_once_view(*, min_incidents=2):
    """The cluster after a test run in which c4, c2 and c1 each crashed once and came
    back (the live cluster's sacct and sacctmgr, 24.11.5): jobs 3 (c[2-4], c4 failed),
    5 and 6 (c[1-2] and c2, c2 failed) and 99 (c[1-4], c1 failed)."""
    from slurmkit.topology import health
    from tests.unit.test_health import run

    runs = [run(["c2", "c3", "c4"], 1796015754, 1796015778, failed_node="c4", job_id=3),
            run(["c1", "c2"], 1796015802, 1796015828, failed_node="c2", job_id=5),
            run(["c2"], 1796015803, 1796015828, failed_node="c2", job_id=6),
            run(["c1", "c2", "c3", "c4"], 1796015896, 1796015920, failed_node="c1", job_id=99)]
    events = health.parse_events("|1796015721|Unknown||Cluster Registered TRES\n"
                                 "c4|1796015778|1796015779|DOWN*|Not responding\n"
                                 "c2|1796015828|1796015830|DOWN*|Not responding\n"
                                 "c1|1796015920|1796015937|DOWN*|Not responding\n")
    report = health.assess(runs, events, min_incidents=min_incidents)
    return ClusterView(TOPOLOGY, list(ALL_IDLE), report.failures, report.lemons, [], report)


def test_nodes_that_each_crashed_once_and_came_back_are_not_excluded():
    # Before: "unhealthy avoided: c[1-2,4]" and --exclude of 3 of the 4 nodes for a
    # 3-4-node job: a job that could never start.
    options, decision = choose_placement(spec(nodes="3-4", kind="training"), crashed_once_view())
    assert options.exclude is None and options.nodelist == "c[1-4]"
    assert any("3 node(s) failed in the window and are back in service: not avoided" in line
               for line in decision.explanation)


def test_exclusion_never_leaves_fewer_than_the_minimum():
    # Even when every node counts as a lemon (threshold 1), a 3-4-node job keeps 3.
    view = crashed_once_view(min_incidents=1)
    assert view.unhealthy == {"c1", "c2", "c4"}
    options, decision = choose_placement(spec(nodes="3-4", kind="training"), view)
    # One incident each: the most recent failure (c1, job 99) is the worst.
    assert options.exclude == "c1"
    assert options.nodelist == "c[2-4]"
    kept = [line for line in decision.explanation if line.startswith("kept despite")]
    assert kept and "c2 (1 failure(s), back in service)" in kept[0] and "c4" in kept[0]


def test_the_worst_lemons_are_excluded_first():
    from slurmkit.topology import health
    from tests.unit.test_health import run

    runs = [run([node], 1000 * index, 1000 * index + 50, failed_node=node, job_id=index)
            for index, node in enumerate(["c1", "c1", "c1", "c3", "c3", "c4", "c4", "c4", "c4"],
                                         start=1)]
    report = health.assess(runs)
    view = ClusterView(TOPOLOGY, list(ALL_IDLE), report.failures, report.lemons, [], report)
    options, _ = choose_placement(spec(nodes=2), view)
    assert options.exclude == "c[1,4]" and options.nodelist is not None
    options, _ = choose_placement(spec(nodes=3), view)
    assert options.exclude == "c4"


def test_a_down_lemon_costs_no_usable_node():
    from slurmkit.topology import health
    from tests.unit.test_health import run

    nodes = [node("c1", ("DOWN", "NOT_RESPONDING")), *ALL_IDLE[1:]]
    runs = [run(["c1"], 1000, 1050, failed_node="c1"), run(["c2"], 1000, 1050, failed_node="c2"),
            run(["c2"], 5000, 5050, failed_node="c2", job_id=2)]
    report = health.assess(runs, out_of_service=["c1"])
    view = ClusterView(TOPOLOGY, nodes, report.failures, report.lemons, [], report)
    assert view.unhealthy == {"c1", "c2"}
    # 3 nodes up (c2-c4): a 2-node job may lose c2 too; a 3-node job may lose only c1.
    assert choose_placement(spec(nodes=2), view)[0].exclude == "c[1-2]"
    assert choose_placement(spec(nodes=3), view)[0].exclude == "c1"


def test_exclusion_counts_only_the_jobs_partitions():
    small = [node("c1", partitions=("main", "small")), node("c2", partitions=("main", "small")),
             node("c3"), node("c4")]
    view = ClusterView(TOPOLOGY, small, {"c1": 3, "c2": 2}, frozenset({"c1", "c2"}))
    options, _ = choose_placement(spec(nodes=1, partition="small"), view)
    assert options.exclude == "c1" and options.nodelist == "c2"
    options, _ = choose_placement(spec(nodes=2, partition="main"), view)
    assert options.exclude == "c[1-2]" and options.nodelist == "c[3-4]"


def test_huge_elastic_ranges_are_placed_in_one_step():
    # Before: one placement per count from MAX down to MIN (40 s for -N 1-10000000).
    started = time.perf_counter()
    options, decision = choose_placement(spec(nodes="1-1000000"), view(*ALL_IDLE))
    assert time.perf_counter() - started < 1.0
    assert options.nodelist == "c[1-4]" and len(decision.nodes) == 4


# ----------------------------------------------------------------- 12,500 nodes


@pytest.fixture(scope="module")
def big():
    from slurmkit.testing import bigcluster
    from slurmkit.topology import health

    cluster = bigcluster.generate()
    out = [n.name for n in cluster.nodes if n.states & health.OUT_OF_SERVICE_STATES]
    report = health.assess(cluster.runs, health.parse_events(cluster.events_text),
                           out_of_service=out)
    topology = parse_topology(cluster.topology_text)
    return cluster, ClusterView(topology, cluster.nodes, report.failures, report.lemons, [],
                                report)


def test_12500_nodes_a_1000_node_job_avoids_exactly_the_lemons(big):
    cluster, big_view = big
    started = time.perf_counter()
    options, decision = choose_placement(spec(nodes="900-1000", kind="training",
                                              partition="gpu"), big_view)
    assert time.perf_counter() - started < 2.0
    excluded = set(hostlist.expand(options.exclude))
    assert excluded == cluster.lemons
    pinned = set(hostlist.expand(options.nodelist))
    assert len(pinned) == 1000 and not pinned & cluster.lemons
    # Nodes that failed once and came back stay usable: some are in the placement.
    assert pinned & cluster.failed_once


def test_12500_nodes_a_small_partition_keeps_enough(big):
    cluster, big_view = big
    # "interactive" has 8 nodes, 2 of them lemons: 7 needed, so only the worse goes.
    options, decision = choose_placement(spec(nodes=7, partition="interactive"), big_view)
    [excluded] = hostlist.expand(options.exclude)
    assert excluded in cluster.lemons and len(hostlist.expand(options.nodelist)) == 7
    assert any(line.startswith("kept despite") for line in decision.explanation)
    options, _ = choose_placement(spec(nodes=8, partition="interactive"), big_view)
    assert options.exclude is None and len(hostlist.expand(options.nodelist)) == 8


@settings(max_examples=40, deadline=None)
@given(minimum=st.integers(1, 12_500), partition=st.sampled_from([None, "gpu", "interactive"]))
def test_12500_nodes_the_job_stays_placeable_when_enough_nodes_are_up(big, minimum, partition):
    cluster, big_view = big
    values = {"nodes": f"{minimum}-{min(12_500, minimum + 10)}"}
    if partition:
        values["partition"] = partition
    job = spec(**values)
    options, _ = choose_placement(job, big_view)
    excluded = set(hostlist.expand(options.exclude or ""))
    members = [n for n in cluster.nodes if not partition or partition in n.partitions]
    up = [n for n in members if n.is_usable]
    if len(up) >= minimum:
        assert len([n for n in up if n.name not in excluded]) >= minimum
    if len(members) >= minimum:
        assert len([n for n in members if n.name not in excluded]) >= minimum
    assert excluded <= cluster.lemons


# ----------------------------------------------------------------- prepare / submit


def _client(data, *, sbatch_stderr=""):
    from slurmkit.slurm.client import SlurmClient
    from slurmkit.slurm.runner import RecordingRunner
    from tests.unit.fakes import fake_slurm

    class Runner(RecordingRunner):
        """Also keeps what each command read on stdin (sbatch: the script)."""

        def run(self, argv, *, timeout_s=60.0, input_text=None):
            self.inputs.append(input_text)
            return super().run(argv, timeout_s=timeout_s, input_text=input_text)

    runner = Runner(fake_slurm(data, job_id=77, sbatch_stderr=sbatch_stderr))
    runner.inputs = []
    return SlurmClient(runner), runner


def test_prepare_places_and_renders_in_the_library(data):
    """What `slurmkit submit` does, without Click: the script carries the placement."""
    from slurmkit.render import render_script
    from slurmkit.submission import prepare, submit

    client, runner = _client(data)
    job = build_spec({"kind": "training", "command": ["python", "t.py"], "nodes": 2})
    submission = prepare(job, client)
    assert submission.placement.nodelist == "c[1-2]"  # c4 is half busy in the capture
    assert submission.script == render_script(job, submission.placement)
    assert submission.explanation and submission.explanation == submission.decision.explanation
    assert submission.placement_json()["nodelist"] == "c[1-2]"
    assert not [call for call in runner.calls if call[0] == "sbatch"]
    assert submit(submission, client).job_id == 77
    [(argv, script)] = [(call, stdin) for call, stdin in zip(runner.calls, runner.inputs,
                                                             strict=True) if call[0] == "sbatch"]
    assert argv == ("sbatch", "--parsable") and script == submission.script


def test_prepare_without_slurm_or_without_placement_asks_nothing(data):
    from slurmkit.submission import NO_PLACEMENT_NOTE, prepare

    job = build_spec({"command": ["x"]})
    unplaced = prepare(job, None)
    assert unplaced.placement is None and unplaced.notes == (NO_PLACEMENT_NOTE,)
    assert unplaced.placement_json() is None and unplaced.explanation == ()
    client, runner = _client(data)
    assert prepare(build_spec({"command": ["x"], "placement": "none"}), client).notes == ()
    assert runner.calls == []
