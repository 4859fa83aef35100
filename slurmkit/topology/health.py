"""Node health from accounting: which nodes are lemons (pure).

A run that ended in NODE_FAIL is blamed only on the nodes Slurm names: the run's
``failed_node`` (``sacct --json``) and the nodes of its allocation whose DOWN event
(slurmdbd's node events, ``sacctmgr show event``) started while it ran or just after.
A run for which Slurm names no node is blamed on none and counted as *unattributed*:
one failed 1,000-node job must not mark 999 healthy nodes.

Failures of a node that happened together (every job on it lost to one crash) count
once: an *incident*. A node is a **lemon** when it had at least ``min_incidents``
incidents in the window (default 2: repeated failures, as lemon-node detection at
large sites counts them), or when it failed and has not come back (still DOWN or
DRAIN, or its DOWN event is still open). A node that failed once and returned to
service is not a lemon: over a day, at any site, many nodes fail once and never again.

``blamed_by`` is shared with ``slurmkit.goodput`` (the report's node table): keep its
name and signature.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from slurmkit.slurm.models import AccountingRecord

# slurmctld ends a run with NODE_FAIL when it marks the node DOWN, so the node's DOWN
# event starts at the run's end; the slack covers the two records being written a
# little apart. An event before the run started is an earlier failure of that node
# (down, then resumed before this run) and blames nothing here.
BLAME_AFTER_END_S = 120

#: Event states that mean the node failed (``DOWN*`` = down and not responding).
DOWN_EVENT_STATES = frozenset({"DOWN", "FAIL", "FAILING"})
#: Node states (``scontrol show nodes``) that mean the node is out of service now.
OUT_OF_SERVICE_STATES = frozenset({"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL",
                                   "FAILING", "NOT_RESPONDING"})
#: Default lemon threshold: blamed incidents in the window.
DEFAULT_MIN_INCIDENTS = 2


def blame_window(run_start: int | None, run_end: int | None) -> tuple[int, int]:
    """(low, high): a node's DOWN event starting in this range blames it for the run."""
    return run_start or 0, (run_end or 0) + BLAME_AFTER_END_S


def blamed_by(event_starts: Iterable[int], run_start: int | None, run_end: int | None) -> bool:
    """True when one of a node's DOWN events started during the run (or just after)."""
    low, high = blame_window(run_start, run_end)
    return any(low <= at <= high for at in event_starts)


@dataclass(frozen=True)
class NodeEvent:
    """A node state event from slurmdbd (``sacctmgr show event``)."""

    node: str
    start_epoch_s: int
    end_epoch_s: int | None
    state: str
    reason: str

    @property
    def is_down(self) -> bool:
        return any(word.rstrip("*").upper() in DOWN_EVENT_STATES
                   for word in self.state.replace("+", " ").split())


def _epoch(text: str) -> int | None:
    text = text.strip()
    # ASCII digits only: int() also takes other scripts' digits, Slurm never prints them.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


def parse_events(text: str) -> list[NodeEvent]:
    """``sacctmgr -n -P show event format=NodeName,TimeStart,TimeEnd,State,Reason``
    (times as epoch seconds: SLURM_TIME_FORMAT=%s). Cluster-wide events (no node
    name) and lines that do not fit are skipped; the reason is last because it is
    free text."""
    events = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) < 5 or not parts[0]:
            continue
        start = _epoch(parts[1])
        if start is None:
            continue
        events.append(NodeEvent(parts[0], start, _epoch(parts[2]), parts[3], parts[4]))
    return events


@dataclass(frozen=True)
class NodeRecord:
    """What accounting says about one node that was blamed at least once."""

    node: str
    incidents: int  # distinct failures blamed on it in the window
    runs: int  # NODE_FAIL runs blamed on it
    last_failure_epoch_s: int
    in_service: bool  # came back after its last failure

    def describe(self) -> str:
        back = "back in service" if self.in_service else "not back in service"
        return f"{self.node} ({self.incidents} failure(s), {back})"


@dataclass(frozen=True)
class HealthReport:
    """Node health over a window: per-node records, and the runs nobody was named for."""

    records: dict[str, NodeRecord] = field(default_factory=dict)
    node_fail_runs: int = 0
    unattributed_runs: int = 0
    min_incidents: int = DEFAULT_MIN_INCIDENTS

    @property
    def lemons(self) -> frozenset[str]:
        return frozenset(name for name, record in self.records.items()
                         if is_lemon(record, self.min_incidents))

    @property
    def failures(self) -> dict[str, int]:
        """Blamed incidents per node."""
        return {name: record.incidents for name, record in self.records.items()}

    def badness(self, node: str) -> tuple:
        """Sort key, worst first: most incidents, out of service, latest failure."""
        record = self.records.get(node)
        if record is None:
            return (0, 0, 0, node)
        return (-record.incidents, record.in_service, -record.last_failure_epoch_s, node)


def is_lemon(record: NodeRecord, min_incidents: int = DEFAULT_MIN_INCIDENTS) -> bool:
    return record.incidents >= min_incidents or (record.incidents > 0 and not record.in_service)


def assess(records: Iterable[AccountingRecord], events: Iterable[NodeEvent] = (), *,
           out_of_service: Iterable[str] = (),
           min_incidents: int = DEFAULT_MIN_INCIDENTS) -> HealthReport:
    """Blame NODE_FAIL runs on the nodes Slurm names and group them into incidents.

    ``out_of_service``: nodes DOWN/DRAIN now (from ``scontrol show nodes``); a blamed
    node among them has not come back. Linear in the runs' node lists and events.
    """
    down_starts: dict[str, list[int]] = {}
    open_since: dict[str, int] = {}
    for event in events:
        if event.is_down:
            down_starts.setdefault(event.node, []).append(event.start_epoch_s)
            if event.end_epoch_s is None:
                open_since[event.node] = max(open_since.get(event.node, 0), event.start_epoch_s)
    failure_times: dict[str, list[int]] = {}
    node_fail_runs = unattributed = 0
    for record in records:
        if record.state != "NODE_FAIL":
            continue
        node_fail_runs += 1
        end = record.end_epoch_s or record.start_epoch_s or 0
        low, high = blame_window(record.start_epoch_s or end, end)
        blamed: dict[str, int] = {}
        # Only nodes with a DOWN event are looked at: a 1,000-node run costs a lookup
        # per node, never a scan of every event for every node.
        for node in record.nodes:
            starts = down_starts.get(node)
            if starts:
                at = [when for when in starts if low <= when <= high]
                if at:
                    blamed[node] = min(at)
        failed = record.failed_node.strip()
        if failed and failed not in blamed and (not record.nodes or failed in record.nodes):
            blamed[failed] = end
        if not blamed:
            unattributed += 1
            continue
        for node, when in blamed.items():
            failure_times.setdefault(node, []).append(when)
    out = frozenset(out_of_service)
    result: dict[str, NodeRecord] = {}
    for node, times in failure_times.items():
        times.sort()
        incidents = 1
        for before, after in itertools.pairwise(times):
            if after - before > BLAME_AFTER_END_S:
                incidents += 1
        last = times[-1]
        back = node not in out and open_since.get(node, -1) < last - BLAME_AFTER_END_S
        result[node] = NodeRecord(node, incidents, len(times), last, back)
    return HealthReport(result, node_fail_runs, unattributed, min_incidents)


def node_failures(records: Iterable[AccountingRecord], events: Iterable[NodeEvent] = ()
                  ) -> dict[str, int]:
    """Blamed incidents per node (see ``assess``); runs without a named node blame none."""
    return assess(records, events).failures


def unhealthy_nodes(failures: dict[str, int],
                    max_failures: int = DEFAULT_MIN_INCIDENTS) -> frozenset[str]:
    """Nodes with at least ``max_failures`` blamed incidents (kept for callers that
    have only counts; ``HealthReport.lemons`` also knows who is still down)."""
    return frozenset(node for node, count in failures.items() if count >= max_failures)
