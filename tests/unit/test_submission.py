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
