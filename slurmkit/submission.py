"""From a JobSpec to a submission: what the cluster looks like, where the job should
go, what to hand to sbatch. ``gather_view`` is the only part that talks to Slurm;
``choose_placement`` is pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from slurmkit.errors import SlurmCommandError
from slurmkit.render import PlacementOptions
from slurmkit.slurm import hostlist
from slurmkit.slurm.client import SlurmClient
from slurmkit.slurm.models import Node
from slurmkit.spec import JobSpec
from slurmkit.topology import health
from slurmkit.topology.model import Topology, parse_topology
from slurmkit.topology.placement import Placement, place


@dataclass
class ClusterView:
    """What placement needs to know, read once per submission."""

    topology: Topology
    nodes: list[Node]
    failures: dict[str, int] = field(default_factory=dict)
    unhealthy: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)


def gather_view(client: SlurmClient, *, health_since: str | None = "now-1days",
                max_failures: int = 1) -> ClusterView:
    """Topology (``scontrol show topology``), nodes (``scontrol show nodes --json``) and
    node health (NODE_FAIL runs and node events since ``health_since``; None = skip)."""
    nodes = client.nodes()
    notes: list[str] = []
    try:
        text = client.topology_text()
        topology = parse_topology(text) if text.strip() else None
    except SlurmCommandError as error:  # topology/default: nothing to show
        topology = None
        notes.append(f"no topology information ({error.stderr or 'empty'}); "
                     "treating the cluster as one switch")
    if topology is None:
        topology = Topology.single_switch(node.name for node in nodes)
    failures: dict[str, int] = {}
    if health_since:
        runs = client.accounting(since=health_since)
        try:
            events = health.parse_events(client.node_events_text(health_since))
        except SlurmCommandError as error:
            events = []
            notes.append(f"no node events from slurmdbd ({error.stderr}); blaming every "
                         "node of a NODE_FAIL run")
        failures = health.node_failures(runs, events)
    return ClusterView(topology, nodes, failures,
                       health.unhealthy_nodes(failures, max_failures), notes)


def node_has_room(spec: JobSpec, node: Node) -> bool:
    """Could this job's share of a node start on ``node`` right now?"""
    if not node.is_usable:
        return False
    if spec.exclusive:
        return node.is_idle
    cpus_needed = spec.tasks_per_node * (spec.cpus_per_task or 1)
    return (node.cpus - node.alloc_cpus >= cpus_needed
            and node.gpus - node.gpus_used >= spec.gpus_per_node)


def choose_placement(spec: JobSpec, view: ClusterView
                     ) -> tuple[PlacementOptions | None, Placement | None]:
    """Pin the best nodes when enough are free now; otherwise ask Slurm for at most K
    leaf switches (``--switches=K@wait``). Unhealthy nodes are always excluded.

    Elastic jobs (``nodes = "MIN-MAX"``) get the most nodes up to MAX that can be
    pinned now, and never fewer than MIN.
    """
    if spec.placement == "none":
        return None, None
    eligible = [node for node in view.nodes
                if not spec.partition or set(spec.partition.split(",")) & set(node.partitions)]
    eligible_names = [node.name for node in eligible]
    free = [node.name for node in eligible if node_has_room(spec, node)]
    unhealthy = sorted(view.unhealthy & set(eligible_names))
    exclude = hostlist.compress(unhealthy) or None
    decision = None
    for count in range(spec.nodes_max, spec.nodes_min - 1, -1):
        decision = place(view.topology, free, count, unhealthy=unhealthy,
                         all_nodes=eligible_names)
        if decision.feasible:
            return PlacementOptions(nodelist=hostlist.compress(decision.nodes),
                                    exclude=exclude, node_count=len(decision.nodes)), decision
    # Not enough free nodes now: let Slurm wait for a compact allocation, bounded.
    decision = place(view.topology, free, spec.nodes_min, unhealthy=unhealthy,
                     all_nodes=eligible_names)
    switches = None
    if decision.capacity_leaves:
        wait = spec.switches_wait_min
        switches = f"{decision.capacity_leaves}@{wait // 60:02d}:{wait % 60:02d}:00"
    return PlacementOptions(exclude=exclude, switches=switches), decision
