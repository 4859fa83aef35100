"""The network topology as a tree of switches (topology/tree) or a set of blocks
(topology/block), built from ``scontrol show topology`` or ``topology.conf``.

Leaves are the switches (or blocks) that nodes hang off; a job is cheapest for the
network when it spans few leaves under a low common switch. Pure: no Slurm calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from slurmkit.errors import ParseError
from slurmkit.slurm import hostlist

#: Name of the synthetic root above blocks, or above several unconnected trees.
VIRTUAL_ROOT = "(root)"


@dataclass
class Switch:
    name: str
    level: int = 0
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    nodes: tuple[str, ...] = ()  # nodes attached directly (leaves only)

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class Topology:
    """A tree of switches. ``leaf_of`` maps every node to its leaf switch."""

    switches: dict[str, Switch]
    root: str
    leaf_of: dict[str, str]

    @property
    def leaves(self) -> list[str]:
        return [name for name, switch in self.switches.items() if switch.is_leaf]

    @property
    def nodes(self) -> list[str]:
        return list(self.leaf_of)

    def descendant_leaves(self, name: str) -> list[str]:
        switch = self.switches[name]
        if switch.is_leaf:
            return [name]
        leaves: list[str] = []
        stack = [name]
        while stack:
            current = self.switches[stack.pop()]
            if current.is_leaf:
                leaves.append(current.name)
            else:
                stack.extend(reversed(current.children))
        return leaves

    def ancestors(self, name: str) -> list[str]:
        """``name``, its parent, ... up to the root."""
        chain = [name]
        while self.switches[chain[-1]].parent is not None:
            chain.append(self.switches[chain[-1]].parent)
        return chain

    def lowest_common_switch(self, leaves: Iterable[str]) -> str:
        leaves = list(leaves)
        if not leaves:
            return self.root
        common = self.ancestors(leaves[0])
        for leaf in leaves[1:]:
            chain = set(self.ancestors(leaf))
            common = [name for name in common if name in chain]
        return common[0]

    @classmethod
    def single_switch(cls, nodes: Iterable[str]) -> Topology:
        """The topology of a cluster without topology information: one flat switch."""
        nodes = tuple(nodes)
        leaf = Switch("(flat)", nodes=nodes)
        return cls({leaf.name: leaf}, leaf.name, {node: leaf.name for node in nodes})


_PAIR_RE = re.compile(r"(\w+)=(\S*)")


def parse_topology(text: str, source: str = "scontrol show topology") -> Topology:
    """Parse ``scontrol show topology`` output or a ``topology.conf`` (switch lines
    ``SwitchName=... [Level=...] [Nodes=...] [Switches=...]``, or block lines
    ``BlockName=... Nodes=...``)."""
    switches: dict[str, Switch] = {}
    children_of: dict[str, list[str]] = {}
    blocks: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pairs = {key.lower(): value for key, value in _PAIR_RE.findall(line)}
        name = pairs.get("switchname") or pairs.get("blockname")
        if not name:
            if "blocksizes" in pairs:
                continue
            raise ParseError(source, f"line {number} has no SwitchName= or BlockName=", line)
        if name in switches:
            raise ParseError(source, f"line {number}: switch {name} defined twice", line)
        child_switches = hostlist.expand(pairs.get("switches", ""))
        nodes = () if child_switches else tuple(hostlist.expand(pairs.get("nodes", "")))
        level = int(pairs["level"]) if pairs.get("level", "").isdigit() else 0
        switches[name] = Switch(name, level, nodes=nodes)
        children_of[name] = child_switches
        if "blockname" in pairs:
            blocks.append(name)
    if not switches:
        raise ParseError(source, "no switches or blocks found", text)
    for name, children in children_of.items():
        for child in children:
            if child not in switches:
                raise ParseError(source, f"switch {name} lists unknown switch {child}")
            if switches[child].parent is not None:
                raise ParseError(source, f"switch {child} has two parents "
                                         f"({switches[child].parent}, {name})")
            switches[child].parent = name
            switches[name].children.append(child)
    roots = [name for name, switch in switches.items() if switch.parent is None]
    if len(roots) == 1 and not blocks:
        root = roots[0]
    else:
        # Blocks, or several disconnected trees: a virtual root above them all.
        root = VIRTUAL_ROOT
        switches[root] = Switch(root, children=list(roots))
        for name in roots:
            switches[name].parent = root
    _assign_levels(switches, root)
    leaf_of: dict[str, str] = {}
    for name, switch in switches.items():
        if switch.is_leaf:
            for node in switch.nodes:
                if node in leaf_of:
                    raise ParseError(source, f"node {node} is on two leaves "
                                             f"({leaf_of[node]}, {name})")
                leaf_of[node] = name
    return Topology(switches, root, leaf_of)


def _assign_levels(switches: dict[str, Switch], root: str) -> None:
    """Levels from the leaves up (leaf = 0), whatever the file said: a parent is one
    above its highest child."""
    def level(name: str) -> int:
        switch = switches[name]
        switch.level = 0 if switch.is_leaf else 1 + max(level(child) for child in switch.children)
        return switch.level
    level(root)
