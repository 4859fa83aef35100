import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.errors import ParseError
from slurmkit.topology.model import VIRTUAL_ROOT, Topology, parse_topology
from slurmkit.topology.placement import Placement, first_fit, leaves_spanned, place

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


# Three leaves under one spine, 4 + 3 + 2 nodes.
UNEVEN = """\
SwitchName=a Nodes=a[1-4]
SwitchName=b Nodes=b[1-3]
SwitchName=c Nodes=c[1-2]
SwitchName=spine Switches=a,b,c
"""


def test_best_fit_across_leaves_takes_the_smallest_leaf_that_holds_the_rest():
    """6 nodes need 2 leaves: the fullest (a, 4) and then the smallest leaf that holds
    the other 2 (c), which leaves b's 3 nodes together for the next job (worst fit
    would take b)."""
    topology = parse_topology(UNEVEN)
    decision = place(topology, topology.nodes, 6)
    assert decision == Placement(requested=6, nodes=("a1", "a2", "a3", "a4", "c1", "c2"),
                                 leaves=("a", "c"), common_switch="spine", level=1,
                                 optimal_leaves=2, capacity_leaves=2, excluded=())
    assert decision.explanation == (
        "request: 6 node(s); free and healthy: 9 on 3 leaf switch(es); lemon nodes "
        "avoided: none",
        "fewest leaf switches possible: 2; lowest common switch holding them: spine "
        "(level 1)",
        "chosen: a: a[1-4] (4 of 4 free); c: c[1-2] (2 of 2 free)")


def test_an_unhealthy_free_node_is_never_chosen_nor_counted():
    topology = parse_topology(SCONTROL)
    # c2 is free but unhealthy: leaf2 holds the job; "x9" is not in the topology.
    decision = place(topology, ["c1", "c2", "c3", "c4", "x9"], 2, unhealthy=["c2", "c9"])
    assert decision == Placement(2, ("c3", "c4"), ("leaf2",), "leaf2", 0, 1, 1, ("c2", "c9"))
    assert decision.explanation[0] == ("request: 2 node(s); free and healthy: 3 on 2 leaf "
                                       "switch(es); lemon nodes avoided: c[2,9]")


def test_an_infeasible_request_says_what_an_empty_cluster_would_need():
    topology = three_level()
    # Healthy capacity: l1 and l4 have one healthy node left each, so 8 nodes need l2
    # and l3 (under the core); counting the unhealthy ones, l1 and l2 (s1) would do.
    unhealthy = ["n1", "n2", "n3", "n13", "n14", "n15"]
    decision = place(topology, [], 8, unhealthy=unhealthy)
    assert decision == Placement(8, (), (), None, None, None, 2, tuple(sorted(unhealthy)))
    assert not decision.feasible
    assert decision.explanation == (
        "request: 8 node(s); free and healthy: 0 on 0 leaf switch(es); lemon nodes "
        "avoided: n[1-3,13-15]",
        "cannot place now: only 0 free healthy node(s)",
        "on an empty cluster it would span 2 leaf switch(es) under core")


def test_a_request_larger_than_the_cluster_has_no_capacity_bound():
    topology = three_level()
    decision = place(topology, ["n1"], 17)
    assert decision == Placement(17, (), (), None, None, None, None, ())
    assert decision.explanation[1:] == ("cannot place now: only 1 free healthy node(s)",)


def test_capacity_is_bounded_by_the_nodes_given_not_the_whole_topology():
    """``all_nodes`` (the job's partitions): 2 nodes on each of l1, l2 and l3, so 6
    nodes need 3 leaves under the core, not the 2 the whole topology would need."""
    topology = three_level()
    partition = ["n1", "n2", "n5", "n6", "n9", "n10"]
    decision = place(topology, ["n1"], 6, all_nodes=partition)
    assert decision.capacity_leaves == 3
    assert decision.explanation[2] == "on an empty cluster it would span 3 leaf switch(es) " \
        "under core"
    feasible = place(topology, partition, 6, all_nodes=partition)
    assert feasible.optimal_leaves == feasible.capacity_leaves == 3
    assert feasible.common_switch == "core" and feasible.level == 2


@pytest.mark.parametrize("count", [0, -1])
def test_no_nodes_is_not_a_placement(count):
    decision = place(three_level(), ["n1", "n2"], count)
    assert not decision.feasible and decision.nodes == () and decision.capacity_leaves is None


def test_first_fit_is_empty_when_too_few_nodes_are_free():
    assert first_fit(three_level(), ["n3", "n1"], 3) == ()
    assert first_fit(three_level(), ["n3", "n1"], 2) == ("n1", "n3")
