"""Goodput: where the GPU-hours went, from Slurm's accounting (every run of every
requeued job) and slurmkit's checkpoint events.

``load`` reads sacct output into columns, ``events`` indexes the checkpoint events,
``engine`` groups runs into jobs and computes ETTR, the badput buckets and every
aggregate, ``report`` lays them out as table / JSON / CSV / HTML (``plots``).

``analyse`` runs that path end to end (live ``sacct`` or a saved dump, the job
selection, events, the policy's classes, the cluster's node events) and ``write``
prints the result: ``slurmkit goodput`` only parses its flags into them. Both import
the modules above when called, so importing one of them stays light.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slurmkit.goodput.engine import Goodput
    from slurmkit.slurm.client import SlurmClient

FORMATS = ("table", "json", "csv", "html")
#: Node states (slurmdbd's node events) that count as a node failure.
_FAILED_NODE_STATES = ("DOWN", "FAIL", "FAILING")


@dataclass(frozen=True)
class Analysis:
    """``report.build``'s two halves: the summary and the per-job engine result."""

    summary: dict[str, Any]
    result: Goodput


def analyse(client: SlurmClient | None = None, *, input_path: str | None = None,
            since: str = "now-7days", until: str | None = None,
            accounts: Iterable[str] = (), partitions: Iterable[str] = (),
            job_ids: Iterable[str] = (), events_dirs: Iterable[str] = (),
            policy_file: str | None = None, gpus_total: int | None = None,
            window_s: int | None = None, progress: bool = False) -> Analysis:
    """The goodput of the runs in ``input_path`` (a ``sacct -D -X --json`` or
    ``--parsable2`` dump with its header), or else of live accounting through
    ``client`` between ``since`` and ``until``. Live, the cluster's nodes give the GPU
    capacity (unless ``gpus_total``) and slurmdbd's node events the node failures.

    ``accounts``/``partitions``/``job_ids`` select runs (``12``, ``12_3``, ``7+1``);
    ``events_dirs`` hold slurmkit's ``events.jsonl`` files; ``policy_file`` names the workload
    classes and which may preempt which; ``window_s``: how long after a PREEMPTED run's end
    its preemptor may start on its nodes (default ``engine.DEFAULT_PREEMPTOR_WINDOW_S``).
    ``progress``: a bar on stderr while a dump is read. Raises UserInputError for bad
    input, Slurm errors for failed commands.
    """
    import numpy as np

    from slurmkit.goodput import engine, load, report
    from slurmkit.goodput.events import load_events  # engine imports it anyway

    window_s = engine.DEFAULT_PREEMPTOR_WINDOW_S if window_s is None else window_s
    accounts, partitions, job_ids = list(accounts), list(partitions), list(job_ids)
    stats = load.IngestStats()
    if input_path is None:
        if client is None:
            raise ValueError("analyse needs a client or an input_path")
        # --json: a job name cannot forge a record there (in --parsable2 a name with a
        # newline and a whole row becomes someone else's run).
        text = client.run(client.accounting_argv(
            since=since, until=until, accounts=accounts, partitions=partitions,
            job_ids=job_ids, json_output=True), timeout_s=600).stdout
        runs = load.from_json(text, stats=stats)
    else:
        client = None  # a dump is analysed as it is, without the live cluster
        runs = load.read_input(input_path, stats=stats, progress=progress)
        if accounts or partitions:
            keep = (runs.account.mask(set(accounts)) if accounts else True) & (
                runs.partition.mask(set(partitions)) if partitions else True)
            runs = runs.take(np.flatnonzero(keep))
    context = None
    if job_ids:
        selected = report.select_jobs(runs, job_ids)
        # A preemptor is another job: look for it among every record around the
        # selected jobs' preempted runs, not among the selected jobs alone.
        context = runs if input_path is not None else _context_around(
            client, selected, window_s, stats)
        runs = selected
    events = load_events(events_dirs)
    ranks: dict[str, int] = {}  # the policy's workload classes, in its order, and their ranks
    if policy_file:
        from slurmkit.policy import config as policy_config

        ranks = {name: spec.rank for name, spec in policy_config.load(policy_file).classes.items()}
    node_events = cluster_nodes = None
    if client is not None:
        live_nodes = client.nodes()
        cluster_nodes = len(live_nodes)
        if gpus_total is None:
            gpus_total = sum(node.gpus for node in live_nodes) or None
        node_events = _node_failures(client, since)
    summary, result = report.build(runs, events=events, stats=stats, classes=tuple(ranks),
                                   ranks=ranks, capacity_gpus=gpus_total,
                                   node_events=node_events, cluster_nodes=cluster_nodes,
                                   window_s=window_s, context=context)
    return Analysis(summary, result)


def _context_around(client: SlurmClient, selected, window_s: int, stats):
    """Every job's records (live sacct) from just before the first to the window after
    the last end of the selected jobs' PREEMPTED (or REQUEUED) runs; None if none."""
    import time

    from slurmkit.goodput import engine, load

    ends = selected.end[selected.state.mask({"PREEMPTED", "REQUEUED"}) & (selected.end > 0)]
    if not ends.size:
        return None
    now = int(time.time())
    # Relative times: the login node's clock and time zone need not be ours.
    since_s = max(0, now - int(ends.min()) + engine.PREEMPTOR_EARLY_S + 60)
    until_s = now - int(ends.max()) - window_s - 60
    text = client.run(client.accounting_argv(
        since=f"now-{since_s}seconds", until=f"now-{until_s}seconds" if until_s > 0 else None,
        json_output=True), timeout_s=600).stdout
    return load.from_json(text, stats=load.IngestStats())


def _node_failures(client: SlurmClient, since: str) -> dict[str, list[int]]:
    """Node -> the epochs at which slurmdbd recorded it failing, since ``since``."""
    from slurmkit.topology import health

    failures: dict[str, list[int]] = {}
    for event in health.parse_events(client.node_events_text(since)):
        if event.state.rstrip("*").upper() in _FAILED_NODE_STATES:
            failures.setdefault(event.node, []).append(event.start_epoch_s)
    return failures


def write(analysis: Analysis, output_format: str, stream: IO[str]) -> None:
    """Lay the analysis out on ``stream`` as one of ``FORMATS``."""
    from slurmkit.goodput import report

    writers = {"json": report.write_json, "csv": report.write_csv,
               "html": lambda summary, result, out: out.write(report.format_html(summary, result)),
               "table": lambda summary, result, out: out.write(report.format_table(summary, result))}
    if output_format not in writers:
        raise ValueError(f"output format {output_format!r}: expected one of "
                         f"{', '.join(FORMATS)}")
    writers[output_format](analysis.summary, analysis.result, stream)
