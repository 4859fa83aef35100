"""Which nodes the next step of a job runs on (pure).

A job run by ``slurmkit.launch`` holds its allocation for its whole life (``sbatch
--no-kill``): the nodes that train (*active*, the batch host always among them) and
``spares`` nodes that wait. After a failure the next step runs on the active nodes
that are still alive, with a spare in place of each dead one where there is a
spare, preferably under the dead node's own leaf switch, so the layout the
placement chose is kept. When fewer than ``nodes_min`` nodes would be left, or the
batch host itself is gone, the job must be requeued instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

LeafOf = Callable[[str], str | None]


@dataclass(frozen=True)
class Layout:
    """Nodes in Slurm's allocation order (the batch host first among the active)."""

    active: tuple[str, ...]
    spares: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestartPlan:
    action: str  # "in-place" | "requeue"
    layout: Layout
    reason: str = ""
    spares_used: tuple[str, ...] = ()
    dead: tuple[str, ...] = field(default=())

    @property
    def in_place(self) -> bool:
        return self.action == "in-place"


def _no_leaf(_node: str) -> None:
    return None


def initial_layout(allocation: Sequence[str], batch_host: str, *, spares: int,
                   nodes_min: int = 1, nodes_max: int | None = None,
                   leaf_of: LeafOf = _no_leaf) -> Layout:
    """Split the allocation into active nodes and spares: the batch host and its leaf
    first, then the fullest leaves, so that the active nodes span as few leaf switches
    as possible. With fewer nodes than wanted, training gets them before spares do."""
    nodes = list(dict.fromkeys(allocation))
    if batch_host not in nodes:
        raise ValueError(f"the batch host {batch_host} is not in the allocation {nodes}")
    wanted = max(len(nodes) - max(0, spares), min(nodes_min, len(nodes)))
    if nodes_max is not None:
        wanted = min(wanted, nodes_max)
    wanted = max(1, wanted)
    by_leaf: dict[str | None, list[str]] = {}
    for node in nodes:
        by_leaf.setdefault(leaf_of(node), []).append(node)
    home = leaf_of(batch_host)
    leaves = sorted(by_leaf, key=lambda leaf: (leaf != home, -len(by_leaf[leaf]),
                                               nodes.index(by_leaf[leaf][0])))
    ordered = [batch_host] + [node for leaf in leaves for node in by_leaf[leaf]
                              if node != batch_host]
    chosen = set(ordered[:wanted])
    return Layout(tuple(node for node in nodes if node in chosen),
                  tuple(node for node in nodes if node not in chosen))


def after_failure(layout: Layout, dead: Iterable[str], batch_host: str, *, nodes_min: int,
                  leaf_of: LeafOf = _no_leaf, order: Sequence[str] | None = None) -> RestartPlan:
    """The next step's layout once ``dead`` nodes are gone. ``order`` is the
    allocation's node order (default: active then spares)."""
    dead_set = set(dead)
    order = list(order) if order is not None else [*layout.active, *layout.spares]
    dead_sorted = tuple(node for node in order if node in dead_set) + \
        tuple(sorted(dead_set - set(order)))
    if batch_host in dead_set:
        return RestartPlan("requeue", layout, f"the batch host {batch_host} is lost: only a "
                           "requeue can bring the job back", dead=dead_sorted)
    survivors = [node for node in layout.active if node not in dead_set]
    spares = [node for node in layout.spares if node not in dead_set]
    used: list[str] = []
    for lost in (node for node in layout.active if node in dead_set):
        if not spares:
            break
        same_leaf = [spare for spare in spares if leaf_of(spare) == leaf_of(lost)
                     and leaf_of(lost) is not None]
        survivor_leaves = [leaf_of(node) for node in survivors]
        spare = (same_leaf or sorted(spares, key=lambda s: -survivor_leaves.count(leaf_of(s))))[0]
        spares.remove(spare)
        used.append(spare)
    active = [node for node in order if node in set(survivors) | set(used)]
    new_layout = Layout(tuple(active), tuple(node for node in order if node in spares))
    if len(active) < nodes_min:
        return RestartPlan("requeue", new_layout,
                           f"{len(active)} node(s) left, the job needs at least {nodes_min}",
                           tuple(used), dead_sorted)
    return RestartPlan("in-place", new_layout, "", tuple(used), dead_sorted)


@dataclass
class RestartBudget:
    """When in-place restarts stop being worth it: an attempt that fails within
    ``window_s`` of its start without completing a step means the restart itself is
    failing (a bad node the probe cannot see, a crash on start); after
    ``max_restarts`` in-place restarts the job is requeued anyway, so that Slurm can
    give it fresh nodes."""

    window_s: float = 60.0
    max_restarts: int = 16
    restarts: int = 0

    def allows(self, *, attempt_age_s: float, made_progress: bool, first_attempt: bool
               ) -> tuple[bool, str]:
        if self.restarts >= self.max_restarts:
            return False, f"{self.restarts} in-place restarts already (the limit)"
        if not first_attempt and not made_progress and attempt_age_s < self.window_s:
            return False, (f"the restarted step failed after {attempt_age_s:.0f} s without "
                           "completing a step")
        return True, ""
