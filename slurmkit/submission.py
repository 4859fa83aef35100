"""From a JobSpec to a submission: what the cluster looks like, where the job should
go, what to hand to sbatch. ``prepare`` does it all (``slurmkit submit`` only prints
its result and, unless it is a dry run, hands the script to ``submit``);
``gather_view`` is the only part that reads Slurm; ``choose_placement`` is pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from slurmkit.errors import SlurmCommandError
from slurmkit.render import PlacementOptions, render_script
from slurmkit.slurm import hostlist
from slurmkit.slurm.client import SlurmClient, SubmitResult
from slurmkit.slurm.models import Node
from slurmkit.spec import JobSpec
from slurmkit.topology import health
from slurmkit.topology.model import Topology, parse_topology
from slurmkit.topology.placement import Placement, place


@dataclass
class ClusterView:
    """What placement needs to know, read once per submission. ``unhealthy`` holds the
    lemon nodes (see ``slurmkit.topology.health``); ``health`` the whole record."""

    topology: Topology
    nodes: list[Node]
    failures: dict[str, int] = field(default_factory=dict)
    unhealthy: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)
    health: health.HealthReport | None = None


def gather_view(client: SlurmClient, *, health_since: str | None = "now-1days",
                max_failures: int = health.DEFAULT_MIN_INCIDENTS) -> ClusterView:
    """Topology (``scontrol show topology``), nodes (``scontrol show nodes --json``) and
    node health (NODE_FAIL runs and node events since ``health_since``; None = skip).
    ``max_failures``: blamed failures in the window that make a node a lemon."""
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
    if not health_since:
        return ClusterView(topology, nodes, notes=notes)
    # Only the NODE_FAIL runs: a day of every run at a large site is hundreds of MB
    # of JSON. sacct needs an end time for a state filter (without one it returns
    # the jobs in that state at the start time only).
    runs = client.accounting(since=health_since, until="now", states=["NODE_FAIL"])
    try:
        events = health.parse_events(client.node_events_text(health_since))
    except SlurmCommandError as error:
        events = []
        notes.append(f"no node events from slurmdbd ({error.stderr}); NODE_FAIL runs are "
                     "blamed only on the node sacct names as failed")
    out_of_service = [node.name for node in nodes
                      if node.states & health.OUT_OF_SERVICE_STATES]
    report = health.assess(runs, events, out_of_service=out_of_service,
                           min_incidents=max_failures)
    return ClusterView(topology, nodes, report.failures, report.lemons, notes, report)


def node_has_room(spec: JobSpec, node: Node) -> bool:
    """Could this job's share of a node start on ``node`` right now?"""
    if not node.is_usable:
        return False
    if spec.exclusive:
        return node.is_idle
    cpus_needed = spec.tasks_per_node * (spec.cpus_per_task or 1)
    return (node.cpus - node.alloc_cpus >= cpus_needed
            and node.gpus - node.gpus_used >= spec.gpus_per_node)


def choose_exclusions(spec: JobSpec, view: ClusterView, eligible: list[Node]
                      ) -> tuple[list[str], list[str]]:
    """(excluded, kept): the lemons among ``eligible`` to ``--exclude``, worst first,
    and those kept despite their record.

    A lemon is excluded only while every partition the job may run in keeps at least
    ``nodes_min`` nodes: among the nodes up now (when it had that many) and among all
    its nodes. So the exclusion never makes a job unrunnable that was runnable, and
    the nodes kept are the least bad ones. Without ``-p`` the job goes to the default
    partition, which the nodes do not say: every partition is kept whole enough.
    """
    lemons = [node for node in eligible if node.name in view.unhealthy]
    if not lemons:
        return [], []
    wanted = set(spec.partition.split(",")) if spec.partition else None

    def partitions_of(node: Node) -> list[str]:
        return [name for name in node.partitions if wanted is None or name in wanted] or [""]

    every: dict[str, int] = {}
    up: dict[str, int] = {}
    for node in eligible:
        for name in partitions_of(node):
            every[name] = every.get(name, 0) + 1
            if node.is_usable:
                up[name] = up.get(name, 0) + 1
    need = spec.allocated_nodes_min

    def may_lose_one(counts: dict[str, int], name: str) -> bool:
        # A partition that already had too few cannot be made worse for this job.
        return counts.get(name, 0) - 1 >= need or counts.get(name, 0) < need

    badness = view.health.badness if view.health else (lambda name: (0, name))
    excluded: list[str] = []
    kept: list[str] = []
    for node in sorted(lemons, key=lambda node: badness(node.name)):
        names = partitions_of(node)
        if all(may_lose_one(every, name) and (not node.is_usable or may_lose_one(up, name))
               for name in names):
            excluded.append(node.name)
            for name in names:
                every[name] -= 1
                if node.is_usable:
                    up[name] -= 1
        else:
            kept.append(node.name)
    return excluded, kept


def choose_placement(spec: JobSpec, view: ClusterView
                     ) -> tuple[PlacementOptions | None, Placement | None]:
    """Pin the best nodes when enough are free now; otherwise ask Slurm for at most K
    leaf switches (``--switches=K@wait``). Lemon nodes are excluded as long as the job
    stays runnable (``choose_exclusions``).

    Elastic jobs (``nodes = "MIN-MAX"``) get the most nodes up to MAX that can be
    pinned now, and never fewer than MIN.
    """
    if spec.placement == "none":
        return None, None
    eligible = [node for node in view.nodes
                if not spec.partition or set(spec.partition.split(",")) & set(node.partitions)]
    eligible_names = [node.name for node in eligible]
    excluded, kept = choose_exclusions(spec, view, eligible)
    excluded_set = set(excluded)
    free = [node.name for node in eligible
            if node.name not in excluded_set and node_has_room(spec, node)]
    exclude = hostlist.compress(excluded) or None
    notes = _health_notes(spec, view, excluded, kept, len(eligible))
    # Placement is feasible exactly when enough free nodes sit in the topology (its
    # root spans every leaf): one call with the largest count that fits, never a
    # loop over MIN..MAX.
    placeable = sum(1 for name in free if name in view.topology.leaf_of)
    count = min(spec.allocated_nodes_max, placeable)
    if count >= spec.allocated_nodes_min:
        decision = place(view.topology, free, count, unhealthy=excluded,
                         all_nodes=eligible_names)
        if decision.feasible:
            decision = replace(decision, explanation=decision.explanation + notes)
            return PlacementOptions(nodelist=hostlist.compress(decision.nodes),
                                    exclude=exclude, node_count=len(decision.nodes)), decision
    # Not enough free nodes now: let Slurm wait for a compact allocation, bounded.
    decision = place(view.topology, free, spec.allocated_nodes_min, unhealthy=excluded,
                     all_nodes=eligible_names)
    decision = replace(decision, explanation=decision.explanation + notes)
    switches = None
    if decision.capacity_leaves:
        wait = spec.switches_wait_min
        switches = f"{decision.capacity_leaves}@{wait // 60:02d}:{wait % 60:02d}:00"
    return PlacementOptions(exclude=exclude, switches=switches), decision


def _health_notes(spec: JobSpec, view: ClusterView, excluded: list[str], kept: list[str],
                  eligible: int) -> tuple[str, ...]:
    """What ``--explain`` says about node health."""
    notes: list[str] = []
    report = view.health

    def described(names: list[str], limit: int = 8) -> str:
        if report is None:
            return hostlist.compress(names)
        shown = [report.records[name].describe() if name in report.records else name
                 for name in names[:limit]]
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(shown) + more

    if report is not None:
        notes.append(f"node health: {report.node_fail_runs} NODE_FAIL run(s) in the window, "
                     f"{report.unattributed_runs} with no node named by Slurm (blamed on "
                     f"none); lemon = at least {report.min_incidents} failures, or failed "
                     "and not back in service")
        once = sum(1 for name, record in report.records.items()
                   if record.in_service and name not in view.unhealthy)
        if once:
            notes.append(f"{once} node(s) failed in the window and are back in service: "
                         "not avoided")
    if excluded:
        notes.append(f"excluded lemons: {described(excluded)}")
    if kept:
        partitions = spec.partition or "every partition"
        notes.append(f"kept despite their record (excluding them would leave fewer than "
                     f"{spec.allocated_nodes_min} node(s) in {partitions}), least bad first: "
                     f"{described(list(reversed(kept)))}")
    if eligible < spec.allocated_nodes_min:
        notes.append(f"only {eligible} node(s) can run this job "
                     f"({spec.partition or 'all partitions'}); it asks for at least "
                     f"{spec.allocated_nodes_min}: Slurm will refuse it")
    return tuple(notes)


# ----------------------------------------------------------------- the whole submission


#: Why a script was rendered without placement (``prepare`` without a client).
NO_PLACEMENT_NOTE = "no Slurm commands here and no --host: rendered without placement"


@dataclass(frozen=True)
class Submission:
    """What ``prepare`` decided: the sbatch script (placement included in its
    ``#SBATCH`` lines), the placement and why, and notes for the user (stderr)."""

    spec: JobSpec
    script: str
    placement: PlacementOptions | None = None
    decision: Placement | None = None
    notes: tuple[str, ...] = ()

    @property
    def explanation(self) -> tuple[str, ...]:
        """How the placement was chosen (``--explain``); empty without placement."""
        return tuple(self.decision.explanation) if self.decision else ()

    def placement_json(self) -> dict | None:
        """The placement as ``submit --json`` shows it; None without placement."""
        if self.placement is None:
            return None
        decision = self.decision
        return {
            "nodelist": self.placement.nodelist, "exclude": self.placement.exclude,
            "switches": self.placement.switches,
            "leaf_switches": list(decision.leaves) if decision else [],
            "optimal_leaf_switches": decision.optimal_leaves if decision else None,
            "common_switch": decision.common_switch if decision else None,
        }


def prepare(spec: JobSpec, client: SlurmClient | None, *,
            health_since: str | None = "now-1days",
            max_failures: int = health.DEFAULT_MIN_INCIDENTS,
            template_dirs: Sequence[Path | str] = ()) -> Submission:
    """Place ``spec`` on the cluster ``client`` reads (unless its placement is
    ``none``) and render its script (``template_dirs`` searched first). Without a
    client (no Slurm reachable: a dry run elsewhere) the script has no placement and
    a note says so. ``health_since``/``max_failures`` as ``gather_view``'s."""
    placement = decision = None
    notes: list[str] = []
    if spec.placement != "none":
        if client is not None:
            view = gather_view(client, health_since=health_since, max_failures=max_failures)
            notes += view.notes
            placement, decision = choose_placement(spec, view)
        else:
            notes.append(NO_PLACEMENT_NOTE)
    script = render_script(spec, placement, template_dirs_extra=template_dirs)
    return Submission(spec, script, placement, decision, tuple(notes))


def submit(submission: Submission, client: SlurmClient) -> SubmitResult:
    """Hand the script to sbatch (on stdin); Slurm's refusal raises SlurmCommandError."""
    return client.submit(submission.script)
