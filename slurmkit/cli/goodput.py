"""``slurmkit goodput``: ETTR and where the rest of the GPU-hours went."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("-S", "--since", default="now-7days", show_default=True,
              help="Start of the window (sacct --starttime).")
@click.option("-E", "--until", default=None, help="End of the window (sacct --endtime).")
@click.option("-A", "--account", "accounts", multiple=True, help="Only these queues (accounts).")
@click.option("-p", "--partition", "partitions", multiple=True, help="Only these partitions.")
@click.option("-j", "--job", "job_ids", multiple=True, type=int, help="Only these jobs.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, exists=True),
              help="A saved dump instead of live sacct: `sacct -D -X -P --format=...` with "
                   "its header line, or `sacct -D -X --json`.")
@click.option("--events", "events_dirs", multiple=True, type=click.Path(exists=True),
              help="Checkpoint directories (or a parent) with slurmkit events.jsonl files.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="A slurmkit policy TOML: its classes name the workload classes.")
@click.option("--gpus-total", type=click.IntRange(1), default=None,
              help="GPU capacity for the utilisation plot (default: live node count).")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False),
              help="Write to this file (default: stdout).")
@click.option("--progress/--no-progress", default=None,
              help="Show ingest progress on stderr (default: when stderr is a terminal).")
@click.pass_obj
def goodput(connection, since, until, accounts, partitions, job_ids, input_path, events_dirs,
            policy_file, gpus_total, output_format, output_path, progress) -> None:
    """ETTR per job, queue, class and cluster; badput buckets; node failures;
    preemption cost; class utilisation; measured vs expected ETTR."""
    from slurmkit.goodput import ingest, report, table
    from slurmkit.goodput.events import load_events

    progress = sys.stderr.isatty() if progress is None else progress
    stats = ingest.IngestStats()
    live = input_path is None
    if live:
        client = connection.client()
        argv = client.accounting_argv(since=since, until=until, accounts=accounts,
                                      partitions=partitions, job_ids=job_ids, json_output=False)
        argv = [arg for arg in argv if not arg.startswith("--format=")] + \
            [f"--format={','.join(ingest.COLUMNS)}"]
        text = client.run(argv, timeout_s=600).stdout
        runs = table.parse_bytes(text.encode("utf-8", "surrogateescape"), ingest.COLUMNS, stats)
    else:
        runs = table.read_table(input_path, stats=stats)
    if not live and (accounts or partitions):
        runs = table.from_runs(r for r in runs.runs() if (not accounts or r.account in accounts)
                               and (not partitions or r.partition in partitions))
    events = load_events(Path(d) for d in events_dirs) if events_dirs else {}
    classes = ()
    if policy_file:
        from slurmkit.policy import config as policy_config

        classes = tuple(policy_config.load(policy_file).classes)
    node_events = None
    cluster_nodes = None
    if live:
        live_nodes = client.nodes()
        cluster_nodes = len(live_nodes)
        if gpus_total is None:
            gpus_total = sum(node.gpus for node in live_nodes) or None
        try:
            from slurmkit.topology import health

            node_events = {}
            for event in health.parse_events(client.node_events_text(since)):
                if event.state.rstrip("*").upper() in ("DOWN", "FAIL", "FAILING"):
                    node_events.setdefault(event.node, []).append(event.start_epoch_s)
        except Exception:  # node events are an enrichment, never a reason to fail
            node_events = None
    built = report.build_report(runs, events=events, stats=stats, classes=classes,
                                capacity_gpus=gpus_total, node_events=node_events,
                                cluster_nodes=cluster_nodes,
                                include_jobs=output_format != "table",
                                job_filter=job_ids if not live else ())
    formatter = {"table": report.format_table, "json": report.format_json,
                 "csv": report.format_csv, "html": report.format_html}[output_format]
    text = formatter(built)
    if output_path:
        Path(output_path).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output_path}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))
