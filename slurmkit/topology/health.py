"""Node health from accounting: which nodes failed jobs recently (pure).

A run that ended in NODE_FAIL blames the nodes of its allocation that went DOWN
while it ran or just after (slurmdbd's node events, ``sacctmgr show event``); without
events, every node of the run is blamed. A node with at least ``max_failures`` blamed
failures in the window is unhealthy: placement avoids it and ``--exclude``s it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from slurmkit.slurm.models import AccountingRecord

# slurmctld ends a run with NODE_FAIL when it marks the node DOWN, so the node's DOWN
# event starts at the run's end; the slack covers the two records being written a
# little apart. An event before the run started is an earlier failure of that node
# (down, then resumed before this run) and blames nothing here.
BLAME_AFTER_END_S = 120


def blamed_by(event_starts: Iterable[int], run_start: int | None, run_end: int | None) -> bool:
    """True when one of a node's DOWN events started during the run (or just after)."""
    low, high = run_start or 0, (run_end or 0) + BLAME_AFTER_END_S
    return any(low <= at <= high for at in event_starts)


@dataclass(frozen=True)
class NodeEvent:
    """A node state event from slurmdbd (``sacctmgr show event``)."""

    node: str
    start_epoch_s: int
    end_epoch_s: int | None
    state: str
    reason: str


def parse_events(text: str) -> list[NodeEvent]:
    """``sacctmgr -n -P show event format=NodeName,TimeStart,TimeEnd,State,Reason``
    (times as epoch seconds: SLURM_TIME_FORMAT=%s). Cluster-wide events (no node
    name) are skipped; the reason is last because it is free text."""
    events = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) < 5 or not parts[0] or not parts[1].isdigit():
            continue
        events.append(NodeEvent(parts[0], int(parts[1]),
                                int(parts[2]) if parts[2].isdigit() else None,
                                parts[3], parts[4]))
    return events


def node_failures(records: Iterable[AccountingRecord], events: Iterable[NodeEvent] = ()
                  ) -> dict[str, int]:
    """Blamed NODE_FAIL runs per node."""
    down_events: dict[str, list[int]] = {}
    for event in events:
        if event.state.rstrip("*").upper() in ("DOWN", "FAIL", "FAILING"):
            down_events.setdefault(event.node, []).append(event.start_epoch_s)
    failures: dict[str, int] = {}
    for record in records:
        if record.state != "NODE_FAIL":
            continue
        end = record.end_epoch_s or record.start_epoch_s or 0
        blamed = [node for node in record.nodes
                  if blamed_by(down_events.get(node, ()), record.start_epoch_s or end, end)]
        for node in blamed or record.nodes:
            failures[node] = failures.get(node, 0) + 1
    return failures


def unhealthy_nodes(failures: dict[str, int], max_failures: int = 1) -> frozenset[str]:
    return frozenset(node for node, count in failures.items() if count >= max_failures)
