"""``slurmkit topology show|place``."""

from __future__ import annotations

import json

import click

from slurmkit.cli._spec_options import NodeRange, health_options


@click.group()
def topology() -> None:
    """The switch tree with free/busy nodes, and what placement would choose."""


def _view(connection, health_since: str, max_failures: int):
    from slurmkit.submission import gather_view

    return gather_view(connection.client(),
                       health_since=None if health_since == "off" else health_since,
                       max_failures=max_failures)


def _with_health(function):
    return health_options(function)


@topology.command()
@click.option("--json", "as_json", is_flag=True, help="The tree as JSON.")
@_with_health
@click.pass_obj
def show(connection, as_json, health_since, max_node_failures) -> None:
    """Draw the tree: free/busy/down nodes under every switch."""
    from slurmkit.slurm import hostlist

    view = _view(connection, health_since, max_node_failures)
    nodes = {node.name: node for node in view.nodes}
    tree = view.topology

    def counts(name):
        members = [node for leaf in tree.descendant_leaves(name)
                   for node in tree.switches[leaf].nodes if node in nodes]
        free = [n for n in members if nodes[n].is_idle]
        down = [n for n in members if not nodes[n].is_usable]
        return members, free, down

    if as_json:
        out = []
        for name, switch in tree.switches.items():
            members, free, down = counts(name)
            out.append({"switch": name, "level": switch.level, "parent": switch.parent,
                        "children": list(switch.children),
                        "nodes": len(members), "free": len(free), "down": len(down),
                        "busy": len(members) - len(free) - len(down),
                        "unhealthy": sorted(set(members) & view.unhealthy)})
        click.echo(json.dumps(out, indent=2))
        return

    def draw(name, prefix="", last=True, top=True):
        members, free, down = counts(name)
        switch = tree.switches[name]
        busy = len(members) - len(free) - len(down)
        branch = "" if top else ("└── " if last else "├── ")
        sick = len(set(members) & view.unhealthy)
        line = (f"{prefix}{branch}{name} (level {switch.level}): {len(free)} free, "
                f"{busy} busy, {len(down)} down of {len(members)}"
                + (f", {sick} unhealthy" if sick else ""))
        if switch.is_leaf:
            marks = []
            for node in switch.nodes:
                record = nodes.get(node)
                state = ("?" if record is None else "down" if not record.is_usable
                         else "free" if record.is_idle else "busy")
                if node in view.unhealthy:
                    state += ",unhealthy"
                marks.append(f"{node}[{state}]")
            line += "  " + " ".join(marks) if len(marks) <= 16 else \
                f"  {hostlist.compress(switch.nodes)}"
        click.echo(line)
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        for index, child in enumerate(switch.children):
            draw(child, child_prefix, index == len(switch.children) - 1, False)

    draw(tree.root)
    for note in view.notes:
        click.echo(f"slurmkit: {note}", err=True)


@topology.command()
@click.option("-N", "--nodes", "nodes", type=NodeRange(), required=True,
              help="Nodes to place: N or MIN-MAX.")
@click.option("-p", "--partition", help="Only nodes of this partition.")
@click.option("--exclusive/--shared", default=True, help="Count only idle nodes as free.")
@click.option("--gpus-per-node", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True)
@_with_health
@click.pass_obj
def place(connection, nodes, partition, exclusive, gpus_per_node, as_json, health_since,
          max_node_failures) -> None:
    """Show where a job of N nodes would go now, and why."""
    from slurmkit.spec import build_spec
    from slurmkit.submission import choose_placement

    values = {"command": ["true"], "nodes": nodes, "exclusive": exclusive,
              "gpus_per_node": gpus_per_node}
    if partition:
        values["partition"] = partition
    spec = build_spec(values, source="topology place")
    options, decision = choose_placement(spec, _view(connection, health_since,
                                                     max_node_failures))
    if as_json:
        click.echo(json.dumps({
            "nodelist": options.nodelist, "switches": options.switches,
            "exclude": options.exclude, "leaf_switches": list(decision.leaves),
            "optimal_leaf_switches": decision.optimal_leaves,
            "common_switch": decision.common_switch,
            "explanation": list(decision.explanation)}, indent=2))
        return
    for line in decision.explanation:
        click.echo(line)
    if options.nodelist:
        click.echo(f"sbatch --nodelist={options.nodelist}"
                   + (f" --exclude={options.exclude}" if options.exclude else ""))
    else:
        click.echo(f"sbatch --switches={options.switches}"
                   + (f" --exclude={options.exclude}" if options.exclude else ""))
