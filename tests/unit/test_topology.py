import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.errors import ParseError
from slurmkit.slurm.models import AccountingRecord
from slurmkit.topology import health
from slurmkit.topology.model import VIRTUAL_ROOT, Topology, parse_topology
from slurmkit.topology.placement import first_fit, leaves_spanned, place

SCONTROL = """\
SwitchName=leaf1 Level=0 LinkSpeed=1 Nodes=c[1-2]
SwitchName=leaf2 Level=0 LinkSpeed=1 Nodes=c[3-4]
SwitchName=spine Level=1 LinkSpeed=1 Nodes=c[1-4] Switches=leaf[1-2]
"""

THREE_LEVEL = """\
# topology.conf: 2 spines x 2 leaves x 4 nodes, one core
SwitchName=l1 Nodes=n[1-4]
SwitchName=l2 Nodes=n[5-8]
SwitchName=l3 Nodes=n[9-12]
SwitchName=l4 Nodes=n[13-16]
SwitchName=s1 Switches=l[1-2]
SwitchName=s2 Switches=l[3-4]
SwitchName=core Switches=s[1-2]
"""


def three_level() -> Topology:
    return parse_topology(THREE_LEVEL, "topology.conf")


def test_scontrol_show_topology():
    topology = parse_topology(SCONTROL)
    assert topology.root == "spine" and sorted(topology.leaves) == ["leaf1", "leaf2"]
    assert topology.leaf_of == {"c1": "leaf1", "c2": "leaf1", "c3": "leaf2", "c4": "leaf2"}
    assert topology.switches["spine"].level == 1


def test_topology_conf_levels_are_computed():
    topology = three_level()
    assert topology.root == "core" and topology.switches["core"].level == 2
    assert topology.lowest_common_switch(["l1", "l2"]) == "s1"
    assert topology.lowest_common_switch(["l1", "l3"]) == "core"


def test_blocks_hang_under_a_virtual_root():
    topology = parse_topology("BlockName=b1 Nodes=n[1-4]\nBlockName=b2 Nodes=n[5-8]\n"
                              "BlockSizes=4,8\n", "topology.conf")
    assert topology.root == VIRTUAL_ROOT and sorted(topology.leaves) == ["b1", "b2"]


@pytest.mark.parametrize("text, message", [
    ("Nodes=c1", "no SwitchName"), ("", "no switches"),
    ("SwitchName=a Switches=b", "unknown switch b"),
    ("SwitchName=a Nodes=c1\nSwitchName=b Nodes=c1", "node c1 is on two leaves"),
    ("SwitchName=a Nodes=c1\nSwitchName=a Nodes=c2", "defined twice"),
])
def test_bad_topology_is_named(text, message):
    with pytest.raises(ParseError, match=message):
        parse_topology(text)


def test_two_nodes_stay_on_one_leaf_when_one_has_room():
    topology = parse_topology(SCONTROL)
    decision = place(topology, ["c1", "c2", "c3", "c4"], 2)
    assert decision.leaves in (("leaf1",), ("leaf2",)) and decision.level == 0
    # Only one node free on leaf1: leaf2 holds both.
    decision = place(topology, ["c1", "c3", "c4"], 2)
    assert decision.nodes == ("c3", "c4")
    # One free on each leaf: spanning is the only way.
    decision = place(topology, ["c1", "c3"], 2)
    assert decision.nodes == ("c1", "c3") and decision.common_switch == "spine"


def test_best_fit_leaves_big_leaves_whole():
    topology = three_level()
    free = ["n1", "n2", "n3", "n4", "n5", "n6"]  # l1 full (4), l2 half (2)
    assert place(topology, free, 2).nodes == ("n5", "n6")


def test_lowest_common_switch_wins_among_equal_leaf_counts():
    topology = three_level()
    # 6 nodes need 2 leaves; l1+l2 (under s1) beat l1+l3 (under core).
    free = ["n1", "n2", "n3", "n4", "n5", "n6", "n9", "n10", "n11"]
    decision = place(topology, free, 6)
    assert set(decision.leaves) == {"l1", "l2"} and decision.common_switch == "s1"


def test_unhealthy_nodes_are_avoided():
    topology = parse_topology(SCONTROL)
    decision = place(topology, ["c1", "c2", "c3", "c4"], 2, unhealthy=["c3"])
    assert decision.nodes == ("c1", "c2") and decision.excluded == ("c3",)


def test_infeasible_request_reports_capacity_leaves():
    topology = three_level()
    decision = place(topology, ["n1"], 6)
    assert not decision.feasible and decision.capacity_leaves == 2
    assert "cannot place now" in decision.explanation[1]


def _brute_force_min_leaves(topology, free, count):
    counts = {}
    for node in free:
        counts[topology.leaf_of[node]] = counts.get(topology.leaf_of[node], 0) + 1
    for k in range(1, len(counts) + 1):
        if any(sum(counts[leaf] for leaf in combo) >= count
               for combo in itertools.combinations(counts, k)):
            return k
    return None


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_leaf_count_is_optimal_against_brute_force(data):
    topology = three_level()
    nodes = list(topology.leaf_of)
    free = data.draw(st.lists(st.sampled_from(nodes), unique=True, min_size=1))
    count = data.draw(st.integers(min_value=1, max_value=len(free)))
    decision = place(topology, free, count)
    assert decision.feasible and len(decision.nodes) == count
    assert set(decision.nodes) <= set(free)
    assert leaves_spanned(topology, decision.nodes) == _brute_force_min_leaves(topology, free, count)


def test_first_fit_baseline_takes_nodes_in_order():
    topology = three_level()
    assert first_fit(topology, ["n16", "n1", "n9"], 2) == ("n1", "n9")


def _record(state, nodes, start=1000, end=1100):
    return AccountingRecord(job_id=1, display_id="1", name="j", user="u", account="a",
                            partition="p", qos="q", state=state, state_flags=(state,),
                            reason="", exit_code=0, exit_signal=None, restarts=0,
                            submit_epoch_s=start, eligible_epoch_s=start, start_epoch_s=start,
                            end_epoch_s=end, elapsed_s=end - start, nodes=tuple(nodes),
                            node_count=len(nodes))


def test_health_blames_the_node_that_went_down():
    events = health.parse_events("|1000|Unknown||Cluster Registered TRES\n"
                                 "c2|1090|1095|DOWN*|Not responding\n"
                                 "c3|1|2|DRAIN|admin maintenance\n")
    assert [event.node for event in events] == ["c2", "c3"]
    failures = health.node_failures([_record("NODE_FAIL", ["c1", "c2"]),
                                     _record("COMPLETED", ["c3"])], events)
    assert failures == {"c2": 1}
    assert health.unhealthy_nodes(failures) == {"c2"}
    assert health.unhealthy_nodes(failures, max_failures=2) == frozenset()


def test_health_does_not_blame_a_nodes_earlier_resolved_failure():
    # c1 went down (and came back) before the run started; c2 went down at its end.
    events = health.parse_events("c1|700|760|DOWN*|Not responding\n"
                                 "c2|1100|1130|DOWN*|Not responding\n")
    assert health.node_failures([_record("NODE_FAIL", ["c1", "c2"])], events) == {"c2": 1}


def test_health_without_events_blames_the_whole_allocation():
    assert health.node_failures([_record("NODE_FAIL", ["c1", "c2"])]) == {"c1": 1, "c2": 1}


def test_placement_scales_to_a_large_tree():
    # 3 levels, 400 leaves of 32 nodes; a quick sanity check (the benchmark measures).
    lines = []
    for leaf in range(400):
        lines.append(f"SwitchName=l{leaf} Nodes=n[{leaf * 32}-{leaf * 32 + 31}]")
    for spine in range(25):
        lines.append(f"SwitchName=s{spine} Switches=l[{spine * 16}-{spine * 16 + 15}]")
    lines.append("SwitchName=core Switches=s[0-24]")
    topology = parse_topology("\n".join(lines))
    randomness = random.Random(1)
    free = [node for node in topology.leaf_of if randomness.random() < 0.4]
    decision = place(topology, free, 1024)
    assert len(decision.nodes) == 1024
    assert len(decision.leaves) == _brute_force_greedy(topology, free, 1024)


def _brute_force_greedy(topology, free, count):
    counts = {}
    for node in free:
        counts[topology.leaf_of[node]] = counts.get(topology.leaf_of[node], 0) + 1
    total = 0
    for k, value in enumerate(sorted(counts.values(), reverse=True), start=1):
        total += value
        if total >= count:
            return k
