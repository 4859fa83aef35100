"""Topology-aware placement (pure).

Given the topology, the nodes that are free and healthy, and a node count, choose
nodes that span the fewest leaf switches, and among those the lowest common switch,
and among those the tightest fit (leaving big free leaves whole for the next job).

Why this is exact for the leaf count: under any switch, the fewest leaves that hold
N nodes are the leaves with the most free nodes, taken in order (exchange argument:
swapping a chosen leaf for a fuller one never needs more leaves). So the optimum is
``k* = min over switches of k(switch)`` with ``k(switch)`` from one sort of its
leaves' free counts; ``bench/topology.py`` checks this against a DP solver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from slurmkit.slurm import hostlist
from slurmkit.topology.model import Topology


@dataclass(frozen=True)
class Placement:
    """A placement decision and why. ``nodes`` is empty when the request cannot be
    placed now; ``capacity_leaves`` then says how many leaves it would need on an
    empty cluster (the ``--switches`` bound)."""

    requested: int
    nodes: tuple[str, ...]
    leaves: tuple[str, ...]
    common_switch: str | None
    level: int | None
    optimal_leaves: int | None
    capacity_leaves: int | None
    excluded: tuple[str, ...] = ()
    explanation: tuple[str, ...] = field(default=(), compare=False)

    @property
    def feasible(self) -> bool:
        return bool(self.nodes)


def _min_leaves(counts: list[int], needed: int) -> int | None:
    """Fewest of ``counts`` (sorted descending) summing to >= needed."""
    total = 0
    for index, count in enumerate(counts, start=1):
        total += count
        if total >= needed:
            return index
    return None


def place(topology: Topology, free: Iterable[str], count: int, *,
          unhealthy: Iterable[str] = (), all_nodes: Iterable[str] | None = None) -> Placement:
    """Choose ``count`` nodes among ``free`` (minus ``unhealthy``).

    ``all_nodes`` (default: the topology's) bounds ``capacity_leaves``: how many leaves
    the job needs if every healthy node were free.
    """
    unhealthy = frozenset(unhealthy)
    free_set = {node for node in free if node not in unhealthy and node in topology.leaf_of}
    free_by_leaf: dict[str, list[str]] = {}
    for node in topology.leaf_of:  # topology order: deterministic choices
        if node in free_set:
            free_by_leaf.setdefault(topology.leaf_of[node], []).append(node)
    healthy_all = [node for node in (all_nodes if all_nodes is not None else topology.leaf_of)
                   if node not in unhealthy and node in topology.leaf_of]
    capacity = _leaf_counts(topology, healthy_all)
    capacity_leaves = _best_switch(topology, capacity, count)
    explanation = [
        f"request: {count} node(s); free and healthy: {len(free_set)} on "
        f"{len(free_by_leaf)} leaf switch(es); lemon nodes avoided: "
        f"{hostlist.compress(sorted(unhealthy)) or 'none'}"
    ]
    best = _best_switch(topology, {leaf: len(nodes) for leaf, nodes in free_by_leaf.items()},
                        count)
    if best is None:
        explanation.append(f"cannot place now: only {len(free_set)} free healthy node(s)")
        need = capacity_leaves[0] if capacity_leaves else None
        if need is not None:
            explanation.append(f"on an empty cluster it would span {need} leaf switch(es) "
                               f"under {capacity_leaves[1]}")
        return Placement(count, (), (), None, None, None, need, tuple(sorted(unhealthy)),
                         tuple(explanation))
    optimal, switch = best
    leaves = _choose_leaves(topology, switch, free_by_leaf, count, optimal)
    nodes: list[str] = []
    taken_by_leaf: list[str] = []
    remaining = count
    for leaf in leaves:
        take = free_by_leaf[leaf][:remaining]
        nodes += take
        remaining -= len(take)
        taken_by_leaf.append(f"{leaf}: {hostlist.compress(take)} "
                             f"({len(take)} of {len(free_by_leaf[leaf])} free)")
    level = topology.switches[switch].level
    explanation.append(f"fewest leaf switches possible: {optimal}; lowest common switch "
                       f"holding them: {switch} (level {level})")
    explanation.append("chosen: " + "; ".join(taken_by_leaf))
    return Placement(count, tuple(nodes), tuple(leaves), switch, level, optimal,
                     capacity_leaves[0] if capacity_leaves else None,
                     tuple(sorted(unhealthy)), tuple(explanation))


def _leaf_counts(topology: Topology, nodes: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        leaf = topology.leaf_of[node]
        counts[leaf] = counts.get(leaf, 0) + 1
    return counts


def _best_switch(topology: Topology, free_count: Mapping[str, int], count: int
                 ) -> tuple[int, str] | None:
    """(fewest leaves, lowest switch achieving it), ties by smallest surplus."""
    if count <= 0 or sum(free_count.values()) < count:
        return None
    best: tuple[int, int, int, str] | None = None  # (leaves, level, surplus, name)
    for name, switch in topology.switches.items():
        if switch.is_leaf:
            counts = [free_count.get(name, 0)]
        else:
            counts = sorted((free_count.get(leaf, 0) for leaf in topology.descendant_leaves(name)
                             if free_count.get(leaf, 0)), reverse=True)
        needed = _min_leaves(counts, count)
        if needed is None:
            continue
        surplus = sum(counts[:needed]) - count
        key = (needed, switch.level, surplus, name)
        if best is None or key < best:
            best = key
    return (best[0], best[3]) if best else None


def _choose_leaves(topology: Topology, switch: str, free_by_leaf: Mapping[str, list[str]],
                   count: int, optimal: int) -> list[str]:
    """``optimal`` leaves under ``switch`` holding ``count``: the fullest ``optimal-1``
    leaves, then the smallest leaf that covers the rest (best fit)."""
    candidates = sorted((leaf for leaf in topology.descendant_leaves(switch)
                         if free_by_leaf.get(leaf)),
                        key=lambda leaf: (-len(free_by_leaf[leaf]), leaf))
    chosen = candidates[:optimal - 1]
    remainder = count - sum(len(free_by_leaf[leaf]) for leaf in chosen)
    rest = [leaf for leaf in candidates[optimal - 1:] if len(free_by_leaf[leaf]) >= remainder]
    last = min(rest, key=lambda leaf: (len(free_by_leaf[leaf]), leaf))
    return chosen + [last]


def first_fit(topology: Topology, free: Iterable[str], count: int) -> tuple[str, ...]:
    """The naive baseline: the first ``count`` free nodes in node order."""
    free_set = set(free)
    chosen = [node for node in topology.leaf_of if node in free_set][:count]
    return tuple(chosen) if len(chosen) == count else ()


def leaves_spanned(topology: Topology, nodes: Iterable[str]) -> int:
    return len({topology.leaf_of[node] for node in nodes})
